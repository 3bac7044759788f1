"""Sweep configs: a base experiment, axes of overrides, seeds; expanded and validated up front."""

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from icl_lab.config import StrictModel, format_validation_error
from icl_lab.errors import ConfigError, IclLabError
from icl_lab.experiment import (
    ExperimentConfig,
    apply_overrides,
    ensemble_key,
    read_yaml,
    resolve_config_path,
    validate_config,
)


class GridAxis(StrictModel):
    """Every combination of the values of each field."""

    grid: dict[str, list[Any]] = Field(min_length=1)


class ZipAxis(StrictModel):
    """The i-th values of every field together (all lists of one length)."""

    zip: dict[str, list[Any]] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> "ZipAxis":
        if len({len(v) for v in self.zip.values()}) > 1:
            raise ValueError("zip lists must all have the same length")
        return self


class ListAxis(StrictModel):
    """Explicit points, each a set of field values."""

    points: list[dict[str, Any]] = Field(min_length=1)


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

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: str = Field(description="config file or bundled config name")
    overrides: list[str] = Field(default_factory=list, description="key.path=value applied to every point")
    axes: list[GridAxis | ZipAxis | ListAxis] = Field(default_factory=list)
    seeds: list[int] | None = Field(None, description="default: the base config's seed")
    ensemble: Literal["auto", "always", "none"] = Field(
        "auto",
        description="train shape-compatible points as one vmapped ensemble: always, never, or auto = on "
        "a GPU (where small models are launch-bound); on a CPU separate processes use the cores better",
    )
    max_ensemble: int = Field(16, ge=1)
    report: SweepReport = SweepReport()


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
    return points


def plan(sweep: SweepConfig, points: list[Point]) -> list[Unit]:
    """Work units in point order: shape-compatible points packed into ensembles (up to
    max_ensemble) when the sweep's ensemble setting says so, else one point each. Deterministic, so
    a rerun finds the same run directories."""
    groups: dict[str, list[Point]] = {}
    for point in points:
        on_gpu = point.config.training.device.startswith("cuda")
        pack = sweep.ensemble == "always" or (sweep.ensemble == "auto" and on_gpu)
        groups.setdefault(ensemble_key(point.config) if pack else str(point.index), []).append(point)
    chunks = [
        members[i : i + sweep.max_ensemble]
        for members in groups.values()
        for i in range(0, len(members), sweep.max_ensemble)
    ]
    chunks.sort(key=lambda chunk: chunk[0].index)
    return [Unit(f"u{i:03d}", tuple(chunk)) for i, chunk in enumerate(chunks)]


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
    if not candidate.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    data = read_yaml(candidate)
    if not isinstance(data, dict):
        raise ConfigError("config error: a sweep file must be a mapping")
    data = apply_overrides(data, list(overrides))
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def dump_sweep(sweep: SweepConfig) -> str:
    return yaml.safe_dump(sweep.model_dump(mode="json", exclude_none=True), sort_keys=False)
