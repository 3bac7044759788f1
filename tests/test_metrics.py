"""Induction metrics against a hand-built induction circuit and independent loop implementations."""

import numpy as np
import pytest
import torch

from icl_lab.evaluation import evaluate
from icl_lab.metrics import EvalContext
from icl_lab.metrics.head_detectors import (
    detector_score,
    duplicate_token_pattern,
    head_detectors,
    induction_pattern,
    ov_copying_score,
    previous_token_pattern,
)
from icl_lab.metrics.induction import copying, icl_score
from icl_lab.models import ModelIO
from icl_lab.models.transformer import Transformer, TransformerConfig
from icl_lab.tasks import Batch
from icl_lab.tasks.induction import InductionConfig, InductionTask

V, T = 200, 32


def hand_built_induction_model() -> Transformer:
    """Layer 0 head 0 copies the previous token into a 'prev' subspace; layer 1 head 0 attends
    from each token to the position whose previous token equals it. Other heads are zero.

    Residual: [token one-hot (V) | position one-hot (T) | previous token (V) | constant 1].
    """
    tok, pos, prev, const = 0, V, V + T, V + T + V
    d, e, c = const + 1, max(V, T) + 1, 40.0
    model = Transformer(
        TransformerConfig(
            n_layers=2,
            n_heads=2,
            d_model=d,
            d_head=e,
            attn_only=True,
            norm="none",
            attn_scale=False,
            bias=False,
            positional="learned",
        ),
        ModelIO(n_ctx=T, d_out=V, d_vocab=V),
    )
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        model.embed.W_E[:, tok : tok + V] = torch.eye(V)
        model.embed.W_E[:, const] = 1.0
        model.pos_embed.W_pos[:, pos : pos + T] = torch.eye(T)
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        a0.W_Q[0, pos : pos + T, :T] = c * torch.eye(T)  # query at i looks for key i ...
        a0.W_K[0, pos : pos + T - 1, 1:T] = torch.eye(T - 1)  # ... which is written by position i - 1
        a0.W_V[0, tok : tok + V, :V] = torch.eye(V)
        a0.W_O[0, :V, prev : prev + V] = torch.eye(V)
        a1.W_Q[0, tok : tok + V, :V] = c * torch.eye(V)  # current token ...
        a1.W_K[0, prev : prev + V, :V] = torch.eye(V)  # ... matches a key's previous token
        a1.W_Q[0, const, V] = c  # position 0 has no previous token: push it away
        a1.W_K[0, pos, V] = -1.0
        a1.W_V[0, tok : tok + V, :V] = torch.eye(V)
        a1.W_O[0, :V, tok : tok + V] = 10 * torch.eye(V)  # predict the copied token ...
        model.unembed.W_U[tok : tok + V] = torch.eye(V)  # ... over the current one (weight 1)
    return model.eval()


def induction_batch(n: int = 64, seed: int = 0) -> tuple[InductionTask, Batch]:
    task = InductionTask(
        InductionConfig(vocab_size=V, seq_len=T, min_prefix=3, max_prefix=8, n_copies=None), 0
    )
    return task, task.sample(n, torch.Generator().manual_seed(seed))


def test_hand_built_induction_head_scores_one_and_other_heads_low() -> None:
    task, batch = induction_batch()
    values = evaluate(hand_built_induction_model(), task, batch, ["prefix_matching", "head_detectors"])
    pm = values["prefix_matching"]
    assert pm[1, 0] > 0.97, "the induction head matches prefixes"
    assert pm[1, 1] < 0.3 and pm[0].max() < 0.3, "uniform and previous-token heads do not"
    prev = values["previous_token_score"]
    # TransformerLens' definition: row 0 has no previous token, so a perfect head scores (T-1)/T
    assert prev[0, 0].item() == pytest.approx((T - 1) / T, abs=1e-3)
    assert prev[0, 1] < 0.3 and prev[1].max() < 0.3


def test_hand_built_model_predicts_repeated_tokens() -> None:
    task, batch = induction_batch()
    values = evaluate(hand_built_induction_model(), task, batch, ["copying", "icl_score"])
    assert values["copy_loss_drop"] > 1.0
    assert values["icl_score"] < -1.0


def test_copying_compares_the_first_copy_with_the_repeats_as_a_loop_does() -> None:
    """Position t's loss is its prediction of token t + 1: the first copy's tokens 1 .. period - 1
    against the repeats' from the second copy's second token (period + 1) to repeat_end - 1."""
    task, batch = induction_batch()
    loss = torch.rand(batch.inputs.shape, generator=torch.Generator().manual_seed(1)) * 5  # (B, T)
    ctx = EvalContext(None, task, batch, None, {})
    ctx.__dict__["token_loss"] = loss
    values = copying(ctx)
    first, repeat = [], []
    meta = zip(batch.meta["period"].tolist(), batch.meta["repeat_end"].tolist(), strict=True)
    for b, (period, end) in enumerate(meta):
        for t in range(batch.inputs.shape[1]):
            token = t + 1
            if 1 <= token < period:
                first.append(float(loss[b, t]))
            elif period < token < end:
                repeat.append(float(loss[b, t]))
    assert first and repeat
    assert values["copy_loss_first"].item() == pytest.approx(np.mean(first), rel=1e-5)
    assert values["copy_loss_repeat"].item() == pytest.approx(np.mean(repeat), rel=1e-5)
    drop = np.mean(first) - np.mean(repeat)
    assert values["copy_loss_drop"].item() == pytest.approx(drop, rel=1e-4, abs=1e-6)


def prefix_matching_loop(pattern: np.ndarray, period: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Straightforward reference: pattern (L, B, H, T, T)."""
    L, B, H, T, _ = pattern.shape
    total, rows = np.zeros((L, H)), 0
    for b in range(B):
        ell = period[b]
        for i in range(T):
            if ell == 0 or i < ell or i >= end[b]:
                continue
            rows += 1
            keys = [j for j in range(1, i + 1) if (i + 1 - j) % ell == 0 and i + 1 - j >= ell]
            total += pattern[:, b, :, i][:, :, keys].sum(-1)
    return total / rows


def test_prefix_matching_equals_loop_reference_on_random_patterns() -> None:
    task, batch = induction_batch(n=6, seed=3)
    L, H = 2, 3
    logits = torch.randn(L, 6, H, T, T).masked_fill(~torch.ones(T, T).tril().bool(), float("-inf"))
    pattern = logits.softmax(-1)
    ctx = EvalContext(
        None, task, batch, None, {f"blocks.{i}.attn.hook_pattern": pattern[i] for i in range(L)}
    )
    ctx.model = type("M", (), {"n_layers": L})()
    from icl_lab.metrics.induction import prefix_matching

    got = prefix_matching(ctx)["prefix_matching"].numpy()
    want = prefix_matching_loop(
        pattern.numpy(), batch.meta["period"].numpy(), batch.meta["repeat_end"].numpy()
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)


def tl_detection_loop(tokens: list[int], kind: str) -> np.ndarray:
    """TransformerLens' detection patterns, written out element by element."""
    n = len(tokens)
    p = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if kind == "previous" and j == i - 1:
                p[i, j] = 1
            if kind == "duplicate" and j < i and tokens[j] == tokens[i]:
                p[i, j] = 1
            if kind == "induction" and 1 <= j <= i and tokens[j - 1] == tokens[i] and j - 1 < i:
                p[i, j] = 1
    return p


@pytest.mark.parametrize(
    ("kind", "fn"),
    [
        ("previous", previous_token_pattern),
        ("duplicate", duplicate_token_pattern),
        ("induction", induction_pattern),
    ],
)
def test_detection_patterns_match_transformer_lens_definitions(kind: str, fn: object) -> None:
    tokens = torch.randint(4, (3, 12), generator=torch.Generator().manual_seed(1))
    got = fn(tokens).numpy()
    for b in range(3):
        np.testing.assert_array_equal(got[b], tl_detection_loop(tokens[b].tolist(), kind))


def test_detector_score_extremes() -> None:
    tokens = torch.randint(10, (2, 8))
    prev = previous_token_pattern(tokens)
    perfect = prev.clone()
    perfect[:, 0, 0] = 1.0  # row 0 has nowhere else to go
    pattern = perfect[None, :, None]  # (L=1, B, H=1, T, T)
    assert detector_score(pattern, prev[:, None])[0, 0, 0].item() == pytest.approx(7 / 8)
    anti = torch.eye(8).expand(2, 8, 8)[None, :, None]  # attends to itself only
    assert detector_score(anti, prev[:, None])[0, 0, 0].item() == 0.0


def test_head_detectors_equal_loop_reference_on_random_patterns() -> None:
    task, batch = induction_batch(n=5, seed=4)
    L, H = 2, 3
    logits = torch.randn(L, 5, H, T, T).masked_fill(~torch.ones(T, T).tril().bool(), float("-inf"))
    pattern = logits.softmax(-1).numpy()
    ctx = EvalContext(
        None, task, batch, None, {f"blocks.{i}.attn.hook_pattern": torch.tensor(pattern[i]) for i in range(L)}
    )
    ctx.model = type("M", (), {"n_layers": L})()
    got = head_detectors(ctx)
    for kind, name in [
        ("previous", "previous_token"),
        ("duplicate", "duplicate_token"),
        ("induction", "induction"),
    ]:
        want = np.zeros((L, H))
        for b, tokens in enumerate(batch.inputs.tolist()):
            detection = tl_detection_loop(tokens, kind)
            for layer in range(L):
                for h in range(H):
                    a = pattern[layer, b, h]
                    want[layer, h] += (a * detection).sum() / a.sum() / len(batch.inputs)
        np.testing.assert_allclose(got[f"{name}_score"].numpy(), want, rtol=1e-5, atol=1e-7)


def test_ov_copying_score_equals_full_vocabulary_eigenvalues() -> None:
    g = torch.Generator().manual_seed(0)
    W_E, W_U = torch.randn(30, 8, generator=g), torch.randn(8, 30, generator=g)
    W_V, W_O = torch.randn(2, 3, 8, 4, generator=g), torch.randn(2, 3, 4, 8, generator=g)
    got = ov_copying_score(W_E, W_V, W_O, W_U)
    for layer in range(2):
        for h in range(3):
            eig = torch.linalg.eigvals((W_E @ W_V[layer, h] @ W_O[layer, h] @ W_U).double())
            assert got[layer, h].item() == pytest.approx((eig.sum().real / eig.abs().sum()).item(), abs=1e-4)
    identity_ov = torch.eye(8)[None, None, :, :4], torch.eye(8)[None, None, :4, :]
    assert ov_copying_score(torch.eye(8), *identity_ov, torch.eye(8)).item() == pytest.approx(1.0)
    assert ov_copying_score(
        torch.eye(8), identity_ov[0], -identity_ov[1], torch.eye(8)
    ).item() == pytest.approx(-1.0)


def test_icl_score_is_late_minus_early_token_loss_over_bands() -> None:
    Tn = 256  # bands of T // 64 = 4 positions either side
    ctx = EvalContext(None, None, None, None, {})
    loss = torch.zeros(5, Tn)
    early, late = round(50 / 512 * Tn), round(500 / 512 * Tn)
    loss[:, early - 4 : early + 5] = 3.0
    loss[:, early + 5] = 100.0  # outside the band
    loss[:, late - 4 : late + 5] = torch.tensor([0.0, 2, 0, 2, 0, 2, 0, 2, 1])  # mean 1
    ctx.__dict__["token_loss"] = loss
    values = icl_score(ctx)
    assert values["loss_early_token"].item() == pytest.approx(3.0)
    assert values["loss_late_token"].item() == pytest.approx(1.0)
    assert values["icl_score"].item() == pytest.approx(-2.0)
