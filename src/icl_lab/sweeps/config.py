"""Sweep configs: a base experiment, axes of overrides, seeds; expanded and validated up front."""

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Discriminator, Field, Tag, model_validator

from icl_lab.config import Name, StrictModel, validated
from icl_lab.errors import ConfigError, IclLabError
from icl_lab.evaluation import evaluate, metric_names
from icl_lab.experiment import (
    ExperimentConfig,
    apply_overrides,
    build_model,
    build_task,
    read_yaml,
    resolve_config_path,
    validate_config,
)
from icl_lab.seeding import generator
from icl_lab.store.metrics_table import TRAIN_SPLIT
from icl_lab.sweeps.packing import Setting, ensembles, is_grouping

MAX_ENSEMBLE = 16  # members trained as one vmapped ensemble at most, unless a sweep says otherwise


def _swept_fields(values: dict[str, list[Any]]) -> dict[str, list[Any]]:
    for field, options in values.items():
        if not options:
            raise ValueError(f"{field}: give at least one value")
        if field.split(".")[0] in ("seed", "name"):
            raise ValueError(f"{field}: the sweep sets seed and name itself (use seeds: [...])")
    return values


class GridAxis(StrictModel):
    """Every combination of the values of each field."""

    grid: dict[str, list[Any]] = Field(min_length=1)

    @model_validator(mode="after")
    def _fields(self) -> "GridAxis":
        _swept_fields(self.grid)
        return self


class ZipAxis(StrictModel):
    """The i-th values of every field together (all lists of one length)."""

    zip: dict[str, list[Any]] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> "ZipAxis":
        lengths = {field: len(v) for field, v in _swept_fields(self.zip).items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"zip lists must all have the same length (got {lengths})")
        return self


class ListAxis(StrictModel):
    """Explicit points, each a set of field values."""

    points: list[dict[str, Any]] = Field(min_length=1)

    @model_validator(mode="after")
    def _fields(self) -> "ListAxis":
        for point in self.points:
            _swept_fields({field: [value] for field, value in point.items()})
        return self


def _axis_kind(value: object) -> str | None:
    """Which kind of axis a mapping (or a validated axis) is, by its one key."""
    keys = (
        set(value) if isinstance(value, dict) else {k for k in ("grid", "zip", "points") if hasattr(value, k)}
    )
    return next((kind for kind in ("grid", "zip", "points") if kind in keys), None)


Axis = Annotated[
    Annotated[GridAxis, Tag("grid")] | Annotated[ZipAxis, Tag("zip")] | Annotated[ListAxis, Tag("points")],
    Discriminator(
        _axis_kind,
        custom_error_type="axis_kind",
        custom_error_message="an axis is a mapping with one key: grid, zip or points",
    ),
]


class HeatmapSpec(StrictModel):
    """A metric (split/metric, e.g. ic/accuracy) over two swept fields, mean over seeds."""

    x: str
    y: str
    metric: str


class CurveSpec(StrictModel):
    """A result column (e.g. transition_midpoint) against one swept field, one line per value of
    another (optional), mean and spread over seeds."""

    x: str
    metric: str = "transition_midpoint"
    by: str | None = None


class SweepReport(StrictModel):
    heatmaps: list[HeatmapSpec] = Field(default_factory=list)
    curves: list[CurveSpec] = Field(default_factory=list)


class SweepConfig(StrictModel):
    """A base experiment config, overrides applied to every point, axes, and seeds."""

    name: Name
    base: str = Field(description="config file or bundled config name")
    overrides: list[str] = Field(default_factory=list, description="key.path=value applied to every point")
    axes: list[Axis] = Field(default_factory=list)
    seeds: list[int] | None = Field(None, min_length=1, description="default: the base config's seed")
    ensemble: Setting = Field(
        "auto",
        description="train shape-compatible points as one vmapped ensemble: always, none, or auto = on "
        "a GPU (where small models are launch-bound), and on a CPU for tiny models only, one "
        "ensemble per worker (sweeps/packing.py)",
    )
    max_ensemble: int = Field(MAX_ENSEMBLE, ge=1)
    report: SweepReport = SweepReport()

    @model_validator(mode="after")
    def _no_point_twice(self) -> "SweepConfig":
        """Each field swept by one axis, each axis's points and each seed distinct: a repeat would
        train the same run twice and count it as two seeds' worth of spread."""
        if self.seeds is not None and len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"seeds: a seed is given twice ({self.seeds})")
        owner: dict[str, int] = {}
        for i, axis in enumerate(self.axes):
            points = [json.dumps(values, sort_keys=True) for values in axis_values(axis)]
            if len(set(points)) < len(points):
                twice = next(p for p in points if points.count(p) > 1)
                raise ValueError(f"axes.{i}: the point {twice} is given twice")
            for field in {field for values in axis_values(axis) for field in values}:
                if field in owner:
                    raise ValueError(f"axes.{i}: {field} is already swept by axes.{owner[field]}")
                owner[field] = i
        return self

    @model_validator(mode="after")
    def _report_reads_swept_fields(self) -> "SweepConfig":
        swept = {"seed", *(field for axis in self.axes for values in axis_values(axis) for field in values)}
        for kind, specs in (("heatmaps", self.report.heatmaps), ("curves", self.report.curves)):
            for i, spec in enumerate(specs):
                for role in ("x", "y", "by"):
                    field = getattr(spec, role, None)
                    if field is not None and field not in swept:
                        raise ValueError(
                            f"report.{kind}.{i}.{role}: {field!r} is not a swept field "
                            f"(swept: {', '.join(sorted(swept)) or 'none'})"
                        )
        return self


@dataclass(frozen=True)
class Point:
    """One experiment of a sweep: its index, the swept values, the seed and the full config."""

    index: int
    params: dict[str, Any]
    seed: int
    config: ExperimentConfig


@dataclass(frozen=True)
class Unit:
    """A piece of work: points trained together (an ensemble, or one point) in one run directory."""

    id: str
    points: tuple[Point, ...]


def axis_values(axis: GridAxis | ZipAxis | ListAxis) -> list[dict[str, Any]]:
    if isinstance(axis, GridAxis):
        keys = list(axis.grid)
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axis.grid.values())]
    if isinstance(axis, ZipAxis):
        keys = list(axis.zip)
        return [dict(zip(keys, combo, strict=True)) for combo in zip(*axis.zip.values(), strict=True)]
    return list(axis.points)


def expand(sweep: SweepConfig) -> list[Point]:
    """Every point of the sweep (axes crossed, then seeds), each config validated; ConfigError names
    the first point that fails."""
    base = read_yaml(resolve_config_path(sweep.base))
    combos = [
        dict(itertools.chain.from_iterable(d.items() for d in combo))
        for combo in itertools.product(*[axis_values(a) for a in sweep.axes])
    ]
    seeds = sweep.seeds if sweep.seeds is not None else [base.get("seed", 0)]
    points = []
    for params in combos:
        for seed in seeds:
            index = len(points)
            assignments = [f"{key}={json.dumps(value)}" for key, value in params.items()]
            data = apply_overrides(
                json.loads(json.dumps(base)),
                [*sweep.overrides, *assignments, f"seed={seed}", f"name={sweep.name}-p{index:03d}"],
            )
            try:
                config = validate_config(data)
            except IclLabError as e:
                where = ", ".join(f"{k}={v}" for k, v in params.items()) or "base"
                raise ConfigError(f"sweep point {index} ({where}, seed {seed}): {e}") from None
            points.append(Point(index, params, seed, config))
    if not points:
        raise ConfigError("the sweep has no points")

    def kind(c: ExperimentConfig) -> str:  # points differing only in seed or training share columns
        return json.dumps([c.task, c.model, c.eval], default=lambda m: m.model_dump(mode="json"))

    kinds = {kind(p.config): p for p in points}
    columns = set().union(*(result_columns(p.config) for p in kinds.values()))
    for kind, specs in (("heatmaps", sweep.report.heatmaps), ("curves", sweep.report.curves)):
        for i, spec in enumerate(specs):
            if spec.metric not in columns:
                raise ConfigError(
                    f"report.{kind}.{i}.metric: {spec.metric!r} is not a result of any point of this sweep "
                    f"(results: {', '.join(sorted(columns))})"
                )
    return points


TRANSITION_COLUMNS = ("onset", "midpoint", "end", "before", "after")


def result_columns(config: ExperimentConfig) -> set[str]:
    """The columns a point's row of the results table has: split/metric for every head-less metric
    it evaluates (found by evaluating the untrained model on two sequences of each split), the
    running training loss, steps and the key curve's transition."""
    task = build_task(config)
    model = build_model(config, task=task)
    names = metric_names(config, model)
    columns = {"steps", f"{TRAIN_SPLIT}/loss", *(f"transition_{name}" for name in TRANSITION_COLUMNS)}
    samplers = task.all_eval_splits()
    for split in config.eval.splits or type(task).all_split_names(config.task):
        values = evaluate(model, task, samplers[split](2, generator(config.seed, "result columns")), names)
        columns |= {f"{split}/{metric}" for metric, value in values.items() if value.dim() == 0}
    return columns


def plan(
    sweep: SweepConfig, points: list[Point], workers: int, saved: list[list[int]] | None = None
) -> list[Unit]:
    """Work units in order of their first point: points packed into ensembles as the sweep's
    ensemble setting and the worker count say (sweeps/packing.py), or as an earlier plan grouped
    them (`saved`: the point indices of each unit), so a rerun finds the same run directories."""
    if saved is not None and not is_grouping(saved, len(points)):
        raise ConfigError(
            "the sweep's plan.json does not group this sweep's points; choose another directory"
        )
    groups = saved or ensembles([p.config for p in points], sweep.ensemble, workers, sweep.max_ensemble)
    return [Unit(f"u{i:03d}", tuple(points[j] for j in group)) for i, group in enumerate(groups)]


BUNDLED_SWEEPS = Path(__file__).parent.parent / "configs" / "sweeps"


def load_sweep(path: str | Path, overrides: list[str] = ()) -> SweepConfig:
    """Read and validate a sweep YAML file, or a bundled sweep by name (e.g. reddy_bk); overrides
    set sweep fields (e.g. seeds=[0,1,2])."""
    candidate = Path(path)
    if (
        not candidate.is_file()
        and (BUNDLED_SWEEPS / f"{candidate.stem}.yaml").is_file()
        and candidate.parent == Path()
    ):
        candidate = BUNDLED_SWEEPS / f"{candidate.stem}.yaml"
    if candidate.is_dir():
        raise ConfigError(
            f"sweep path is a directory, not a sweep file: {path} (its state: icl-lab sweep status {path})"
        )
    if not candidate.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    data = read_yaml(candidate)
    if not isinstance(data, dict):
        raise ConfigError("config error: a sweep file must be a mapping")
    return validated(SweepConfig, apply_overrides(data, list(overrides)), "a sweep file")


def dump_sweep(sweep: SweepConfig) -> str:
    return yaml.safe_dump(sweep.model_dump(mode="json", exclude_none=True), sort_keys=False)
