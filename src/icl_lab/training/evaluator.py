"""The trainer's evaluation part: each member on the fixed batches of its own task and seed."""

from torch import Tensor

from icl_lab.evaluation import evaluate
from icl_lab.interventions import Clamp
from icl_lab.models import Model
from icl_lab.tasks import Batch, Task


class Evaluator:
    """Evaluates one member at a time on every split's fixed batch, with the clamps active at the
    step (unless the config's eval.with_clamps is off), on the given metrics."""

    def __init__(
        self, tasks: list[Task], batches: list[dict[str, Batch]], metrics: list[str], with_clamps: bool = True
    ) -> None:
        self.tasks, self.batches, self.metrics, self.with_clamps = tasks, batches, metrics, with_clamps

    def __call__(
        self, model: Model, member: int, clamps: list[Clamp], on: Tensor
    ) -> dict[str, dict[str, Tensor]]:
        """{split: {metric: value}} of the member whose parameters `model` holds; on (n_clamps,)
        gates the clamps for this member."""
        if not self.with_clamps:
            clamps, on = [], on[:0]
        task = self.tasks[member]
        return {
            split: evaluate(model, task, batch, self.metrics, clamps, on)
            for split, batch in self.batches[member].items()
        }
