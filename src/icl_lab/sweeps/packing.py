"""Which configs train together as one vmapped ensemble: a sweep's points, or a reproduction's runs.

Configs of one `ensemble_key` may share an ensemble. Whether they do is the `ensemble` setting:
`always`, `none`, or `auto`. On a GPU small models are launch-bound and `auto` always packs. On a
CPU an ensemble saves the per-op overhead a tiny model's step is made of and little else (a model
whose step is real arithmetic runs as fast alone, and separate processes use the cores as well), so
`auto` packs there when a member's forward pass at its training batch size is at most
PACK_CPU_MFLOP, measured by benchmarks/ensemble_breakeven.py (one core, an ensemble against the same
runs one after another), and spreads the packed configs over the workers: ensembles of about
packed / workers members, one per worker.

A model that cannot train vmapped (experiment.ensemble_refusal: LSTM and GRU, and any with
dropout) trains alone, whatever the setting.

An ensemble of up to `max_ensemble` members; a group larger than that splits into ensembles of
sizes differing by one at most. Results of a member equal its single run's within rounding
(tests/test_ensemble.py), so a grouping, once made, is kept in the run directory's plan and reused
when the work resumes, whatever the worker count then.
"""

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch.utils.flop_counter import FlopCounterMode

from icl_lab.experiment import (
    ExperimentConfig,
    build_model,
    build_task,
    ensemble_key,
    ensemble_refusal,
    total_steps,
)
from icl_lab.seeding import generator

Setting = Literal["auto", "always", "none"]

PACK_CPU_MFLOP = 25.0
"""forward MFLOP per training step up to which `auto` packs on a CPU (see the module docstring)"""


def _attention_flops(
    query: torch.Size, key: torch.Size, value: torch.Size, *args: object, **kwargs: object
) -> int:
    """Attention's scores and weighted sum: (..., q, d) x (..., k, d) and (..., q, k) x (..., k, d_v)."""
    *batch, q, d = query
    return 2 * math.prod(batch) * q * key[-2] * (d + value[-1])


def _attention_backward_flops(grad: torch.Size, *shapes: torch.Size, **kwargs: object) -> int:
    """Four products of the forward's size: the gradients of the scores, queries, keys and values."""
    return 2 * _attention_flops(*shapes[:3])


def flop_counter() -> FlopCounterMode:
    """torch's flop counter, also counting the CPU's fused attention kernel (which it misses)."""
    aten = torch.ops.aten
    return FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward_flops,
        },
    )


def forward_mflop(config: ExperimentConfig) -> float:
    """MFLOP of the model's forward pass on one training batch (a training step does about three
    times this). Counted on the meta device: shapes only, no arithmetic, whatever the model's size."""
    task = build_task(config)
    model = build_model(config, task=task).to("meta")
    batch = task.training_sample(config.training.batch_size, generator(config.seed, "flop count"), 0)
    with torch.no_grad(), flop_counter() as counter:
        model(batch.inputs.to("meta"))
    return counter.get_total_flops() / 1e6


def training_mflop(configs: Sequence[ExperimentConfig], forward: dict[str, float]) -> float:
    """Rough MFLOP of training a run of these members: three forward passes per member-step, the
    forward's MFLOP kept in `forward` by ensemble_key (one count for configs of one shape)."""
    key = ensemble_key(configs[0])
    if key not in forward:
        forward[key] = forward_mflop(configs[0])
    return 3 * forward[key] * total_steps(configs[0]) * len(configs)


def _split(members: list[int], size: int) -> list[list[int]]:
    """members in order, cut into the fewest ensembles of at most `size`, sizes within one."""
    parts = math.ceil(len(members) / size)
    cuts = [round(i * len(members) / parts) for i in range(parts + 1)]
    return [members[a:b] for a, b in itertools.pairwise(cuts)]


def ensembles(
    configs: Sequence[object], setting: Setting, workers: int, max_ensemble: int
) -> list[list[int]]:
    """The configs' indices grouped into runs (only ExperimentConfigs pack), ordered by each run's
    first index: see the module docstring."""
    groups: dict[str, list[int]] = {}
    spread: set[str] = set()  # groups packed by auto on a CPU, sized by the worker count
    decided: dict[str, bool] = {}
    for i, config in enumerate(configs):
        key = ensemble_key(config) if isinstance(config, ExperimentConfig) and setting != "none" else None
        if key is not None and key not in decided:
            on_cpu = not config.training.device.startswith("cuda")
            packable = ensemble_refusal(config) is None
            decided[key] = packable and (
                setting == "always" or not on_cpu or forward_mflop(config) <= PACK_CPU_MFLOP
            )
            if decided[key] and setting == "auto" and on_cpu:
                spread.add(key)
        groups.setdefault(key if key is not None and decided[key] else f"alone {i}", []).append(i)
    packed_on_cpu = sum(len(members) for key, members in groups.items() if key in spread)
    cpu_size = min(max_ensemble, math.ceil(packed_on_cpu / workers))
    runs = [
        run
        for key, members in groups.items()
        for run in _split(members, cpu_size if key in spread else max_ensemble)
    ]
    return sorted(runs)


def is_grouping(groups: object, n: int) -> bool:
    """Whether `groups` (read back from a saved plan) puts each of n configs in exactly one run."""
    if not isinstance(groups, list) or not all(isinstance(group, list) for group in groups):
        return False
    return sorted(i for group in groups for i in group) == list(range(n))
