"""Head detectors on TransformerLens' definitions, and the OV-circuit copying score.

The detectors score a head by the attention mass it puts on a detection pattern built from the
tokens, as TransformerLens' head_detector does with error_measure="mul", exclude_bos=False and
exclude_current_token=False: score = sum(A * P) / sum(A) per sequence, averaged over sequences.
Range [0, 1]; rows without any detection target count as 0, so a perfect induction head on a
sequence whose second half repeats its first half scores about 0.5, not 1 (use prefix_matching for
a score that ignores rows without a target).
"""

import torch
from torch import Tensor

from icl_lab.config import TaskConfig
from icl_lab.metrics.base import EvalContext, attention_mass, metric
from icl_lab.models.base import Model
from icl_lab.tasks.base import Task


def previous_token_pattern(tokens: Tensor) -> Tensor:
    """(B, T) -> (B, T, T): 1 at (i, i-1)."""
    T = tokens.shape[-1]
    eye = torch.eye(T - 1, device=tokens.device)
    pattern = torch.zeros(T, T, device=tokens.device)
    pattern[1:, :-1] = eye
    return pattern.expand(tokens.shape[0], T, T)


def duplicate_token_pattern(tokens: Tensor) -> Tensor:
    """(B, T) -> (B, T, T): 1 at (i, j) for j < i with tokens[j] == tokens[i]."""
    T = tokens.shape[-1]
    earlier = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril(-1)
    return ((tokens[:, :, None] == tokens[:, None, :]) & earlier).float()


def induction_pattern(tokens: Tensor) -> Tensor:
    """(B, T) -> (B, T, T): 1 at (i, j + 1) for j < i with tokens[j] == tokens[i]."""
    B, T = tokens.shape
    after = torch.zeros(B, T, T, dtype=torch.bool, device=tokens.device)
    after[:, :, 1:] = tokens[:, :, None] == tokens[:, None, :-1]  # key j + 1 follows a copy of i's token
    return (after & torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()).float()


def detector_score(patterns: list[Tensor] | Tensor, detections: Tensor) -> Tensor:
    """TransformerLens' 'mul' score of each head on each detection pattern: patterns per layer
    (B, H, T, T) (a list, or stacked), detections (B, K, T, T) -> (L, H, K)."""
    mass = attention_mass(patterns, detections)  # (L, B, H, K)
    total = torch.stack([p.sum((-1, -2)) for p in patterns])  # (L, B, H)
    return (mass / total[..., None]).mean(1)


@metric(
    "head_detectors",
    hooks=("attn.hook_pattern",),
    tokens=True,
    units=dict.fromkeys(
        [f"{kind}_score" for kind in ("previous_token", "duplicate_token", "induction")], "attention share"
    ),
)
def head_detectors(ctx: EvalContext) -> dict[str, Tensor]:
    """Per head: previous-token, duplicate-token and induction scores (TransformerLens definitions)."""
    tokens = ctx.batch.inputs
    detections = [previous_token_pattern(tokens), duplicate_token_pattern(tokens), induction_pattern(tokens)]
    scores = detector_score(ctx.layers("attn.hook_pattern"), torch.stack(detections, 1))  # (L, H, 3)
    names = ("previous_token_score", "duplicate_token_score", "induction_score")
    return dict(zip(names, scores.unbind(-1), strict=True))


def ov_copying_score(W_E: Tensor, W_V: Tensor, W_O: Tensor, W_U: Tensor) -> Tensor:
    """Per head: sum(eigenvalues) / sum(|eigenvalues|) of the OV circuit W_E W_V W_O W_U (vocab x vocab).

    W_V: (L, H, d, e), W_O: (L, H, e, d). Range [-1, 1]; 1 when every eigenvalue is positive (the
    head copies its input token to the output), -1 when every one is negative (it suppresses it).
    A head whose OV circuit is zero (its output never reaches the logits, e.g. W_V or W_O is zero)
    neither copies nor suppresses: it scores 0, not 0/0. The nonzero eigenvalues of
    (W_E W_V)(W_O W_U) are those of the small (W_O W_U)(W_E W_V), which is what is decomposed.
    """
    small = W_O @ W_U @ W_E @ W_V  # (L, H, e, e)
    eig = torch.linalg.eigvals(small.double())
    total = eig.abs().sum(-1)
    return torch.where(
        total > 0, eig.sum(-1).real / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0
    ).float()


def ov_weights(model: Model) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(W_E, W_V stacked over layers, W_O stacked, W_U) of a transformer whose heads write into the
    residual stream that the unembedding reads; ValueError for a model without that circuit."""
    blocks = getattr(model, "blocks", [])
    attention = [getattr(block, "attn", None) for block in blocks]
    W_E, W_U = (
        getattr(getattr(model, "embed", None), "W_E", None),
        getattr(getattr(model, "unembed", None), "W_U", None),
    )
    name = type(model).__name__
    if not attention or any(a is None or not hasattr(a, "W_V") for a in attention):
        raise ValueError(f"reads attention heads' W_V and W_O, which model {name} does not have")
    if W_E is None or model.io.d_vocab is None or W_U is None or model.io.d_vocab != model.io.d_out:
        raise ValueError("needs token embeddings and an unembedding over the same vocabulary")
    if len(getattr(model, "readout", ())):
        raise ValueError("needs the unembedding to read the residual stream (no readout MLP)")
    if any(not hasattr(a, "W_O") for a in attention):
        raise ValueError(
            "reads each head's W_O, but the model has no output projection (output_projection: false)"
        )
    return W_E, torch.stack([a.W_V for a in attention]), torch.stack([a.W_O for a in attention]), W_U


def _has_ov_circuit(model: Model, task: type[Task], config: TaskConfig) -> None:
    ov_weights(model)


@metric(
    "copying_eigenvalues",
    requires=_has_ov_circuit,
    units={"copying_eigenvalue_score": "eigenvalue ratio, -1 to 1"},
)
def copying_eigenvalues(ctx: EvalContext) -> dict[str, Tensor]:
    """Per head: positive-eigenvalue share of W_U W_OV W_E (Olsson; ignores LayerNorm and MLPs)."""
    return {"copying_eigenvalue_score": ov_copying_score(*ov_weights(ctx.model))}
