"""Reddy's reduced models of in-context classification, trainable on the bursty task like any model.

SPEC section 1 gives their ingredients but not their equations; the equations below are our
reconstruction. Notation, for a sequence x1 l1 ... xN lN xq: c_t is the content part (the last D
dims) of token t, x_j = c_{2j} the items, l_j = c_{2j+1} the label tokens, x_q the query, and
u_k (k < L) the task's label vectors (a task constant). Both models expose TransformerLens-style
hooks blocks.{0,1}.attn.hook_pattern (batch, 1 head, query, key), so that the same progress
measures (item-label association, target-label attention, induction strength) read them.
"""

import itertools
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from icl_lab.config import ModelConfig
from icl_lab.models.base import MODELS, Model, ModelIO
from icl_lab.models.hooks import HookPoint


class ReducedConfig(ModelConfig):
    """Initial values of the reduced models' parameters (plus small Gaussian jitter)."""

    init: dict[str, float] = Field(default_factory=dict, description="initial value per parameter")
    init_std: float = Field(0.0, ge=0, description="std of Gaussian jitter added at init")

    def check_io(self, io: ModelIO) -> None:
        if io.d_input is None or io.target_positions is None:
            raise ValueError(f"{self.name} reads vector inputs and predicts at the query only")


class ReducedModel(Model):
    """Shared plumbing: parameters by name, content slicing, pattern hooks."""

    constants: ClassVar[tuple[str, ...]] = ("label_vectors",)
    parameter_names: ClassVar[tuple[str, ...]] = ()
    label_vectors: Tensor

    def __init__(self, cfg: ReducedConfig, io: ModelIO) -> None:
        super().__init__()
        self.cfg, self.io, self.n_layers, self.n_heads = cfg, io, 2, 1
        for name in self.parameter_names:
            self.register_parameter(name, nn.Parameter(torch.zeros(())))
        self.blocks = nn.ModuleList([nn.Module(), nn.Module()])
        for block in self.blocks:
            block.attn = nn.Module()
            block.attn.hook_pattern = HookPoint()
        self.hook_logits = HookPoint()
        self.setup_hooks()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            for name in self.parameter_names:
                jitter = (
                    torch.randn((), generator=generator, device=getattr(self, name).device)
                    * self.cfg.init_std
                )
                getattr(self, name).fill_(self.cfg.init.get(name, 0.0)).add_(jitter)

    def split(self, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Items (B, N, D), label tokens (B, N, D) and query (B, D) from the inputs."""
        content = inputs[..., inputs.shape[-1] - self.label_vectors.shape[1] :]
        n = (inputs.shape[1] - 1) // 2
        return content[:, 0 : 2 * n : 2], content[:, 1 : 2 * n : 2], content[:, -1]

    def emit_patterns(self, item_attention: Tensor, query_weights: Tensor, T: int) -> None:
        """Expose the implied attention: layer 0, label token j -> its item with item_attention (or
        (B,)) and itself otherwise; layer 1, the query over label tokens with query_weights (B, N);
        every other token attends to itself."""
        hooks = [block.attn.hook_pattern for block in self.blocks]
        if not any(h.fns for h in hooks):
            return
        B, n = query_weights.shape
        dev = query_weights.device
        item_attention = item_attention.expand(B)
        labels = torch.arange(1, 2 * n, 2, device=dev)
        first = torch.eye(T, device=dev).repeat(B, 1, 1)
        first[:, labels, labels] = (1 - item_attention)[:, None]
        first[:, labels, labels - 1] = item_attention[:, None]
        second = torch.eye(T, device=dev).repeat(B, 1, 1)
        second[:, -1, -1] = 0.0
        second[:, -1, labels] = query_weights
        hooks[0](first[:, None])
        hooks[1](second[:, None])

    def output(self, logits: Tensor) -> Tensor:
        """(B, L) logits at the query -> (B, 1, L) through hook_logits."""
        return self.hook_logits(logits[:, None])


class InductionHeadConfig(ReducedConfig):
    """The three-parameter induction head (beta1, beta2, xi); two parameters with layer1 'ideal'."""

    name: Literal["induction_head_model"] = "induction_head_model"
    layer1: Literal["learned", "ideal"] = Field(
        "learned", description="ideal: label tokens carry their item fully (beta1 = infinity)"
    )
    in_weights: Literal["none", "linear", "mlp"] = Field(
        "none",
        description="an in-weights path added to the logits, reading the query token alone: linear, "
        "or mlp (the network's readout: ReLU layers of in_weights_hidden, He init, then linear)",
    )
    in_weights_hidden: list[int] = Field([128, 128], description="the mlp path's hidden widths")

    @field_validator("in_weights", mode="before")
    @classmethod
    def _bool(cls, value: object) -> object:
        """Configs from before the mlp path said true / false."""
        return ("linear" if value else "none") if isinstance(value, bool) else value


@MODELS.register("induction_head_model")
class InductionHeadModel(ReducedModel):
    """Minimal induction head: label j carries a = sigmoid(beta1) of its item; the query attends over
    label tokens with w = softmax_j(beta2 * a * x_q . x_j); logits_k = xi * (sum_j w_j l_j) . u_k
    (+ an in-weights readout of the query token). With layer1 'ideal' (a = 1) it has two
    parameters, beta2 and xi. Limits: xi = 0 gives uniform predictions (loss ln L) or, with an
    in-weights path, that path's alone; beta2 = 0 averages the context labels; beta2, xi -> infinity
    with the query class in context and distinct labels gives accuracy 1.

    The mlp in-weights path follows Reddy's account of the network (a two-parameter induction head
    "stacked with a deep classifier"): the two paths add their logits, so they compete only for the
    loss left to explain, and each class's row of the classifier learns from the sequences whose
    query is of that class, at a rate set by the class's frequency.
    """

    Config = InductionHeadConfig
    parameter_names = ("beta1", "beta2", "xi")

    def __init__(self, cfg: InductionHeadConfig, io: ModelIO) -> None:
        super().__init__(cfg, io)
        widths = [io.d_input, *(cfg.in_weights_hidden if cfg.in_weights == "mlp" else []), io.d_out]
        # reads the whole query token; empty without an in-weights path
        self.in_weights = nn.ModuleList(
            nn.Linear(a, b, bias=False)
            for a, b in itertools.pairwise(widths if cfg.in_weights != "none" else [])
        )
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The scalars as ReducedModel; the in-weights path's hidden layers He-initialised, its last
        layer zero (so that both paths start silent)."""
        super().reset_parameters(generator)
        with torch.no_grad():
            for i, layer in enumerate(self.in_weights):
                if i == len(self.in_weights) - 1:
                    layer.weight.zero_()
                else:
                    layer.weight.normal_(0.0, (2 / layer.in_features) ** 0.5, generator=generator)

    def forward(self, inputs: Tensor) -> Tensor:
        items, labels, query = self.split(inputs)
        a = (
            torch.sigmoid(self.beta1)
            if self.cfg.layer1 == "learned"
            else torch.ones((), device=inputs.device)
        )
        weights = torch.softmax(self.beta2 * a * torch.einsum("bd,bnd->bn", query, items), dim=-1)
        self.emit_patterns(a, weights, inputs.shape[1])
        copied = torch.einsum("bn,bnd->bd", weights, labels)  # (B, D)
        logits = self.xi * copied @ self.label_vectors.T  # (B, L)
        if len(self.in_weights):
            h = inputs[:, -1]
            for layer in self.in_weights[:-1]:
                h = torch.relu(layer(h))
            logits = logits + self.in_weights[-1](h)
        return self.output(logits)


class NestedLogitsConfig(ReducedConfig):
    """The phenomenological model: three nested logits (context label, layer 1, layer 2)."""

    name: Literal["nested_logits"] = "nested_logits"


@MODELS.register("nested_logits")
class NestedLogitsModel(ReducedModel):
    """Phenomenological loss with three nested logits z1 (context label), z2 (layer-1 item-label
    association) and z3 (layer-2 target-label attention), c = sigmoid(z1), m = sigmoid(z2) sigmoid(z3):

        p_k = (1 - c) / L + c * [(1 - m) * n_k / N + m * [k = label of the best-matching item]]

    where n_k counts label k among the N context labels and the best-matching item maximises
    x_q . x_j (the ideal match an induction head finds). Outputs log p as logits, so the loss is
    -log p_target. Learning c first is the slow shortcut (accuracy 1/L -> about B/N); m needs both
    z2 and z3, whose gradients are each proportional to the other's sigmoid, so it stays near zero
    and then jumps. Limits: c = 0 -> loss ln L; c = 1, m = 0 -> p_target = n_target / N; m = 1 ->
    loss 0. With L = N the context labels are all labels, so c has no gradient advantage.
    """

    Config = NestedLogitsConfig
    parameter_names = ("z1", "z2", "z3")

    def forward(self, inputs: Tensor) -> Tensor:
        items, labels, query = self.split(inputs)
        L, n = self.label_vectors.shape[0], items.shape[1]
        label_ids = (labels @ self.label_vectors.T).argmax(-1)  # (B, N): which label each token is
        counts = F.one_hot(label_ids, L).float().mean(1)  # (B, L): n_k / N
        best = torch.einsum("bd,bnd->bn", query, items).argmax(-1)  # (B,)
        matched = F.one_hot(label_ids.gather(1, best[:, None])[:, 0], L).float()  # (B, L)
        c, m = torch.sigmoid(self.z1), torch.sigmoid(self.z2) * torch.sigmoid(self.z3)
        probs = (1 - c) / L + c * ((1 - m) * counts + m * matched)
        weights = torch.sigmoid(self.z3) * F.one_hot(best, n) + (1 - torch.sigmoid(self.z3)) / n
        self.emit_patterns(torch.sigmoid(self.z2), weights, inputs.shape[1])
        return self.output(probs.log())
