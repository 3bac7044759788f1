"""What a checkpoint holds of a training run, and the one place that knows its tensor key format."""

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from icl_lab.store.checkpoints import Checkpoint


@dataclass
class TrainState:
    """Everything a resumed run needs to continue bit-identically: the stacked parameters (member
    axis first), the optimiser, each member's data generator, the running training-loss sum and
    count since the last evaluation, the step and the wall time spent so far."""

    params: dict[str, Tensor]
    optimizer: torch.optim.Optimizer
    data_generators: list[torch.Generator]
    loss_sum: Tensor
    loss_count: int = 0
    step: int = 0
    wall_s: float = 0.0

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """(tensors, JSON-able info) for a checkpoint."""
        tensors = {f"param/{k}": v for k, v in self.params.items()}
        optim, param_groups = optimizer_tensors(self.optimizer)
        tensors |= optim
        for i, g in enumerate(self.data_generators):
            tensors[f"rng/data/{i}"] = g.get_state()
        tensors["trainer/loss_sum"] = self.loss_sum
        info = {
            "members": len(self.data_generators),
            "loss_count": self.loss_count,
            "wall_s": self.wall_s,
            "param_groups": param_groups,
        }
        return tensors, info

    def load_state_dict(self, checkpoint: Checkpoint) -> None:
        """Take over a checkpoint's state, in place (tensors keep their devices)."""
        with torch.no_grad():
            for k, v in self.parameters(checkpoint).items():
                self.params[k].copy_(v)
        load_optimizer(self.optimizer, checkpoint, self.loss_sum.device)
        for i, g in enumerate(self.data_generators):
            g.set_state(checkpoint.tensors[f"rng/data/{i}"])
        self.loss_sum.copy_(checkpoint.tensors["trainer/loss_sum"])
        self.loss_count = checkpoint.info["loss_count"]
        self.step, self.wall_s = checkpoint.step, checkpoint.info["wall_s"]

    @staticmethod
    def parameters(checkpoint: Checkpoint) -> dict[str, Tensor]:
        """A checkpoint's parameters by name, stacked over members (axis 0)."""
        return checkpoint.group("param")


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """An optimiser's state as checkpoint tensors ('optim/<param index>/<name>') and its param
    groups (JSON-able, for the sidecar)."""
    state = optimizer.state_dict()
    tensors = {
        f"optim/{index}/{key}": value
        for index, entries in state["state"].items()
        for key, value in entries.items()
    }
    return tensors, state["param_groups"]


HOW_IT_STEPS = ("capturable", "fused", "foreach", "differentiable")
"""param-group flags that say how an optimiser computes its update, not what it has learnt"""


def load_optimizer(optimizer: torch.optim.Optimizer, checkpoint: Checkpoint, device: torch.device) -> None:
    """Restore an optimiser from what optimizer_tensors wrote (param groups in info["param_groups"]).
    The optimiser keeps its own HOW_IT_STEPS flags: a run trained compiled on a GPU (Adam capturable)
    may resume eager or on the CPU. Adam's step counts are left for torch to place: on the
    parameters' device when the optimiser is capturable or fused, else on the CPU. A state tensor
    takes its parameter's strides (a checkpoint stores it contiguous): torch's fused Adam pairs
    parameter and state elements by memory position, so a transposed parameter (an SAE encoder made
    as its decoder's transpose) beside a contiguous state would update with other elements' moments."""
    groups = [
        {**saved, **{key: live[key] for key in HOW_IT_STEPS if key in live}}
        for saved, live in zip(checkpoint.info["param_groups"], optimizer.param_groups, strict=True)
    ]
    params = [p for group in optimizer.param_groups for p in group["params"]]  # as state_dict numbers them
    state: dict[str, Any] = {"state": {}, "param_groups": groups}
    for key, value in checkpoint.group("optim").items():
        index, name = key.split("/")
        param = params[int(index)]
        if name != "step":
            value = torch.empty_like(param).copy_(value) if value.shape == param.shape else value.to(device)
        state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(state)
