"""Grafting: an activation taken from another trained model run on the same inputs."""

from functools import cache
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from icl_lab.interventions.base import CLAMPS, Clamp, ClampContext
from icl_lab.models.base import Model
from icl_lab.models.hooks import HookFn, HookPoint


@cache
def donor(source: str, step: int | None, member: int, device: str) -> Model:
    """A frozen model from another run's checkpoint (loaded once per process)."""
    from icl_lab.store.run import Run  # the run store imports the config, which imports clamps

    model = Run.open(source).model(step, member).to(device)
    return model.requires_grad_(False)


@CLAMPS.register("graft")
class Graft(Clamp):
    """Graft an activation (e.g. a layer's output) from another run's checkpoint.

    The activation at `hook` (e.g. blocks.0.hook_attn_out) is replaced by the same activation of a
    donor: another run's checkpoint (step, default latest; member) evaluated
    on the same inputs. The donor is frozen; gradients flow on from the grafted activation."""

    kind: Literal["graft"] = "graft"
    hook: str
    source: str = Field(description="the donor's run directory")
    step: int | None = None
    member: int = Field(0, ge=0)

    def check(self, model: Model) -> None:
        if self.hook not in model.hook_dict:
            raise ValueError(f"model has no hook point {self.hook!r}")
        if not (Path(self.source) / "manifest.json").is_file():
            raise ValueError(f"graft source is not a run directory: {self.source}")

    def hooks(self, ctx: ClampContext) -> list[tuple[str, HookFn]]:
        def graft(act: Tensor, hook: HookPoint) -> Tensor:
            model = donor(str(Path(self.source).resolve()), self.step, self.member, str(act.device))
            with torch.no_grad():
                _, cached = model.run_with_cache(ctx.inputs, names_filter=self.hook)
            value = cached[self.hook]
            if value.shape != act.shape:
                raise ValueError(
                    f"graft: donor's {self.hook} has shape {tuple(value.shape)}, ours {tuple(act.shape)}"
                )
            return torch.where(ctx.on, value, act)

        return [(self.hook, graft)]
