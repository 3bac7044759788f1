"""Grafting: an activation taken from another trained model run on the same inputs."""

import copy
from functools import cache
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from icl_lab.interventions.base import CLAMPS, Clamp, ClampContext
from icl_lab.models.base import Model
from icl_lab.models.hooks import HookFn, HookPoint


@cache
def donor(source: str, step: int | None, member: int, device: str) -> Model:
    """A frozen model from another run's checkpoint, built on the device (loaded once per process)."""
    from icl_lab.store.run import Run  # the run store imports the config, which imports clamps

    return Run.open(source).model(step, member, device).requires_grad_(False)


def _hook_shape(model: Model, hook: str) -> tuple[int, ...] | None:
    """The shape of a hook's activation for one sequence, from a forward pass on the meta device
    (None if the model cannot run there)."""
    io = model.io
    if any(p.device.type != "meta" for p in model.parameters()):
        model = copy.deepcopy(model).to("meta")
    shape = (1, io.n_ctx) if io.d_vocab is not None else (1, io.n_ctx, io.d_input)
    inputs = torch.zeros(shape, dtype=torch.long if io.d_vocab is not None else torch.float, device="meta")
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(inputs, names_filter=hook)
    except (RuntimeError, NotImplementedError):
        return None
    return tuple(cache[hook].shape)


@CLAMPS.register("graft")
class Graft(Clamp):
    """Graft an activation (e.g. a layer's output) from another run's checkpoint.

    The activation at `hook` (e.g. blocks.0.hook_attn_out) is replaced by the same activation of a
    donor: another run's checkpoint (step, default latest; member) evaluated
    on the same inputs. The donor is frozen; gradients flow on from the grafted activation."""

    kind: Literal["graft"] = "graft"
    traceable: ClassVar[bool] = False  # the donor is read from disk once, then run as it is
    hook: str
    source: str = Field(description="the donor's run directory")
    step: int | None = None
    member: int = Field(0, ge=0)

    def check(self, model: Model) -> None:
        """The donor must read the same inputs and give the hook an activation of the same shape
        (compared by a forward pass on the meta device)."""
        from icl_lab.errors import IclLabError
        from icl_lab.experiment import build_model
        from icl_lab.store.run import Run

        if self.hook not in model.hook_dict:
            raise ValueError(f"model has no hook point {self.hook!r}")
        try:
            run = Run.open(self.source)
            config = run.member_config(self.member)
        except IclLabError as e:
            raise ValueError(f"graft source: {e}") from None
        if self.step is not None and self.step not in run.checkpoint_steps:
            raise ValueError(
                f"graft source {self.source} has no checkpoint at step {self.step} "
                f"(its checkpoints: {', '.join(map(str, run.checkpoint_steps)) or 'none'})"
            )
        donor_model = build_model(config, device="meta")
        if donor_model.io != model.io:
            raise ValueError(
                f"graft source {self.source} reads other inputs or gives other outputs "
                f"({donor_model.io}; this model: {model.io})"
            )
        if self.hook not in donor_model.hook_dict:
            raise ValueError(f"graft source {self.source} has no hook point {self.hook!r}")
        theirs, ours = _hook_shape(donor_model, self.hook), _hook_shape(model, self.hook)
        if theirs and ours and theirs != ours:
            raise ValueError(f"graft source's {self.hook} has shape {theirs}, this model's {ours}")

    def hooks(self, ctx: ClampContext) -> list[tuple[str, HookFn]]:
        def graft(act: Tensor, hook: HookPoint) -> Tensor:
            value = self.donor_activation(ctx.inputs)
            if value.shape != act.shape:
                raise ValueError(
                    f"graft: donor's {self.hook} has shape {tuple(value.shape)}, ours {tuple(act.shape)}"
                )
            return torch.where(ctx.on, value, act)

        return [(self.hook, graft)]

    def donor_activation(self, inputs: Tensor) -> Tensor:
        """The donor's activation at the hook on these inputs (no gradient)."""
        model = donor(str(Path(self.source).resolve()), self.step, self.member, str(inputs.device))
        with torch.no_grad():
            _, cached = model.run_with_cache(inputs, names_filter=self.hook)
        return cached[self.hook]
