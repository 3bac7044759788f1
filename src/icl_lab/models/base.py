"""What a model must offer, what a task tells it about its inputs and outputs, and the registry."""

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from icl_lab.config import ModelConfig
from icl_lab.models.hooks import HookedModule
from icl_lab.registry import Registry


@dataclass(frozen=True)
class ModelIO:
    """The shape contract between a task and a model.

    Exactly one of d_vocab (token-id input) and d_input (vector input) is set. target_positions is
    None when every position carries a target, else the positions that do (negative counts from the end).
    """

    n_ctx: int
    d_out: int
    d_vocab: int | None = None
    d_input: int | None = None
    target_positions: tuple[int, ...] | None = None

    @property
    def inputs(self) -> str:
        """The inputs in words, e.g. "token ids below 16 at 32 positions"."""
        what = f"token ids below {self.d_vocab}" if self.d_vocab else f"vectors of width {self.d_input}"
        return f"{what} at {self.n_ctx} positions"

    def __str__(self) -> str:
        at = "every position" if self.target_positions is None else f"positions {list(self.target_positions)}"
        return f"{self.inputs}, {self.d_out} outputs at {at}"


class Model(HookedModule):
    """A hookable sequence model: inputs (batch, pos) ids or (batch, pos, d_input) -> logits."""

    Config: ClassVar[type[ModelConfig]]
    constants: ClassVar[tuple[str, ...]] = ()
    """names of task constants (Task.model_constants) the model needs, e.g. a task's label vectors"""
    io: ModelIO
    n_layers: int
    n_heads: int
    takes_table: bool = False
    """whether forward also takes vector inputs as table and rows (Batch.table)"""

    def forward(self, inputs: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(
        self,
        inputs: Tensor,
        return_type: Literal["logits", "loss", "both"] = "logits",
        **table_rows: Tensor,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The logits, or as TransformerLens' return_type asks, the mean next-token cross-entropy
        (logits at position t scored against token t + 1) or (logits, loss). table_rows: the
        table and rows of Batch.table_rows(), for a model that takes_table."""
        logits = super().__call__(inputs, **table_rows)
        if return_type == "logits":
            return logits
        if not self.scores_next_tokens(inputs, logits):
            raise ValueError(
                "return_type='loss' is the next-token loss of a language model (token ids in, a logit "
                "for every token at every position out); for this model use its task's loss"
            )
        loss = F.cross_entropy(logits[..., :-1, :].flatten(0, -2), inputs[..., 1:].flatten())
        return loss if return_type == "loss" else (logits, loss)

    def scores_next_tokens(self, inputs: Tensor, logits: Tensor) -> bool:
        """Whether these are a language model's logits: token ids in, a logit for every token at
        every position out."""
        vocab = self.io.d_vocab
        return vocab is not None and vocab == self.io.d_out and logits.shape[-2] == inputs.shape[-1]

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def batched(self, vmapped: bool) -> None:
        """Told whether it will run under torch.func.vmap (some fused kernels have no batching rule)."""

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters the optimiser's weight decay leaves alone (its submodules' own
        no_weight_decay, prefixed by where they sit)."""
        return {
            f"{prefix}.{name}" if prefix else name
            for prefix, module in self.named_modules()
            if module is not self and hasattr(module, "no_weight_decay")
            for name in module.no_weight_decay()
        }

    @classmethod
    def ensemble_refusal(cls, cfg: ModelConfig) -> str | None:
        """Why members of this model cannot train as one vmapped ensemble, or None."""
        return None

    def set_constants(self, constants: dict[str, Tensor]) -> None:
        """Store the task constants this model declared, as non-persistent buffers."""
        for name in self.constants:
            self.register_buffer(name, constants[name], persistent=False)


MODELS: Registry[type[Model]] = Registry("model")
