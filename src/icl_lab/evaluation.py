"""One evaluation pass: run a model on a batch, cache the hooks its metrics read, compute them."""

import torch
from torch import Tensor

from icl_lab.errors import ComponentError
from icl_lab.experiment import ExperimentConfig
from icl_lab.interventions.base import Clamp, clamped_forward
from icl_lab.metrics import METRICS, EvalContext
from icl_lab.models import Model
from icl_lab.models.hooks import HookPoint
from icl_lab.seeding import generator
from icl_lab.tasks import TASKS, Batch, Task


def metric_names(config: ExperimentConfig, model: Model) -> list[str]:
    """The metrics a run evaluates: the config's list (validated against the model and task), else
    those of the task's defaults that apply to this model (a mixer has no attention patterns)."""
    if config.eval.metrics:
        return list(config.eval.metrics)
    task = TASKS.get(config.task.name)
    return [name for name in task.default_metrics if METRICS.get(name).applies(model, task, config.task)]


def split_names(config: ExperimentConfig) -> list[str]:
    """The splits a run evaluates: the config's list, else all of its task's."""
    return config.eval.splits or TASKS.get(config.task.name).all_split_names(config.task)


def key_metric(config: ExperimentConfig) -> tuple[str, str, str]:
    """(split, metric, summary over heads) of the curve a run's progress line and report follow:
    its task's key metric, or the loss on its first split when the run does not evaluate the
    task's key split (eval.splits leaves it out, or the task's config has no such split)."""
    split, metric, how = TASKS.get(config.task.name).key_metric
    splits = split_names(config)
    return (split, metric, how) if split in splits else (splits[0], "loss", "mean")


def eval_batches(config: ExperimentConfig, task: Task, device: torch.device) -> dict[str, Batch]:
    """The fixed evaluation batch of every split; it depends only on the config's seed and the
    split name."""
    samplers = task.all_eval_splits()
    return {
        split: samplers[split](config.eval.batch_size, generator(config.seed, "eval", split, device=device))
        for split in split_names(config)
    }


@torch.no_grad()
def evaluate(
    model: Model,
    task: Task,
    batch: Batch,
    metrics: list[str],
    clamps: list[Clamp] = (),
    on: Tensor | None = None,
) -> dict[str, Tensor]:
    """{metric: value} for one batch; values are 0-d or (n_layers, n_heads) tensors.

    The clamps (each gated by its flag in `on`, default all on) act before the metrics' hooks read
    the activations.
    """
    wanted = {h for name in metrics for h in METRICS.get(name).hooks}
    names = {f"blocks.{layer}.{h}" for h in wanted for layer in range(model.n_layers)}
    cache: dict[str, Tensor] = {}

    def save(x: Tensor, hook: HookPoint) -> None:
        cache[hook.name] = x

    flags = torch.ones(len(clamps), dtype=torch.bool, device=batch.inputs.device) if on is None else on
    logits = clamped_forward(
        lambda inputs, hooks: model.run_with_hooks(inputs, fwd_hooks=hooks),
        model,
        list(clamps),
        flags,
        batch.meta,
        batch.inputs,
        [(names.__contains__, save)],
    )
    ctx = EvalContext(model, task, batch, logits, cache)
    values: dict[str, Tensor] = {}
    for name in metrics:
        values.update(_checked(name, METRICS.get(name).fn(ctx), values, (model.n_layers, model.n_heads)))
    return values


def _checked(name: str, produced: object, earlier: dict[str, Tensor], heads: tuple[int, int]) -> dict:
    """A metric's values, or ComponentError naming what the metrics table cannot take: not a dict
    of tensors, a value neither 0-d nor (n_layers, n_heads), a key another metric gave already."""
    if not isinstance(produced, dict) or not all(isinstance(v, Tensor) for v in produced.values()):
        raise ComponentError(f"metric {name!r} must return a dict of tensors, not {type(produced).__name__}")
    for key, value in produced.items():
        if key in earlier:
            raise ComponentError(f"metric {name!r} returns {key!r}, which an earlier metric returned")
        if value.dim() != 0 and tuple(value.shape) != heads:
            raise ComponentError(
                f"metric {name!r} returns {key!r} of shape {tuple(value.shape)}: a value must be 0-d "
                f"or per head, (n_layers, n_heads) = {heads}"
            )
    return produced
