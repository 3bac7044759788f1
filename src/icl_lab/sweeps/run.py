"""Running a sweep into a sweep directory, and its results table.

<sweep_dir>/sweep.yaml (the sweep as run), plan.json (points and units), runs/u###/ (a run, an
ensemble for several points), results.parquet (a row per point: swept values, seed, run, status,
error, final metrics per split as split/metric, the key curve's main transition).
"""

import json
import math
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from icl_lab.analysis.summary import summarise
from icl_lab.errors import ConfigError, IclLabError, RunStoreError
from icl_lab.files import atomic_write, atomic_write_text, read_text
from icl_lab.store.run import Run
from icl_lab.sweeps.config import TRANSITION_COLUMNS, SweepConfig, Unit, dump_sweep, expand, plan
from icl_lab.sweeps.execute import Executor, Job, execute

RESULTS = "results.parquet"


def run_sweep(
    sweep: SweepConfig,
    sweep_dir: Path,
    executor: Executor = "local",
    workers: int = 2,
    progress: bool = True,
    address: str | None = None,
) -> pa.Table:
    """Expand and validate every point, train the units not yet complete, write the results table."""
    units, jobs = prepare_sweep(sweep, sweep_dir, workers)
    outcomes = execute(jobs, executor, workers, progress, address)
    return finish_sweep(sweep_dir, units, outcomes)


def prepare_sweep(sweep: SweepConfig, sweep_dir: Path, workers: int) -> tuple[list[Unit], list[Job]]:
    """Expand and validate every point, write sweep.yaml and plan.json (an existing plan's units are
    kept: how many workers packed them does not matter on a rerun); the units and the jobs that
    train them (several sweeps' jobs may share one pool: see reproduce)."""
    points = expand(sweep)
    text = dump_sweep(sweep)
    saved = None
    if (sweep_dir / "sweep.yaml").is_file():
        if read_text(sweep_dir / "sweep.yaml") != text:
            raise ConfigError(f"{sweep_dir} holds a different sweep; choose another directory")
        if (sweep_dir / "plan.json").is_file():
            saved = [unit["points"] for unit in read_plan(sweep_dir)]
    units = plan(sweep, points, workers, saved)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep_dir / "sweep.yaml", text)
    layout = {
        "points": [{"point": p.index, "params": p.params, "seed": p.seed} for p in points],
        "units": [{"unit": u.id, "points": [p.index for p in u.points]} for u in units],
    }
    atomic_write_text(sweep_dir / "plan.json", json.dumps(layout, indent=1))
    return units, [Job(sweep_dir / "runs" / u.id, tuple(p.config for p in u.points)) for u in units]


def read_plan(sweep_dir: Path) -> list[dict]:
    """The units of a sweep directory's plan.json ({"unit": id, "points": [index, ...]} each)."""
    path = sweep_dir / "plan.json"
    if not path.is_file():
        raise IclLabError(f"not a sweep directory (no plan.json): {sweep_dir}")
    try:
        units = json.loads(path.read_text())["units"]
        shaped = (isinstance(u["unit"], str) and all(isinstance(i, int) for i in u["points"]) for u in units)
        if units and all(shaped):  # a sweep has at least one point, so one unit
            return units
    except (ValueError, KeyError, TypeError):
        pass
    raise IclLabError(f"{path} is corrupt (not a sweep plan); delete it and rerun with the same --workers")


def finish_sweep(sweep_dir: Path, units: list[Unit], outcomes: list[tuple[str, str]]) -> pa.Table:
    """Write and return the results table once the units' jobs have run ((status, error) each)."""
    table = results_table(sweep_dir, units, [error for _, error in outcomes])
    atomic_write(sweep_dir / RESULTS, lambda tmp: pq.write_table(table, tmp))
    return table


def results_table(sweep_dir: Path, units: list[Unit], errors: list[str]) -> pa.Table:
    rows = []
    for unit, error in zip(units, errors, strict=True):
        path = sweep_dir / "runs" / unit.id
        try:
            run = Run.open(path) if (path / "manifest.json").is_file() else None
        except IclLabError as e:  # its job failed on it too, saying the same
            run, error = None, error or str(e)
        # a run marked complete whose job failed (its code changed, it is damaged) has no results
        status = "failed" if run is None or (error and run.status == "complete") else run.status
        for member, point in enumerate(unit.points):
            row = {
                "point": point.index,
                "seed": point.seed,
                **{k: _cell(v) for k, v in point.params.items()},
                "unit": unit.id,
                "member": member,
                "run": str(path),
                "status": status,
                "error": error or (run.manifest.get("error", "") if run else ""),
            }
            if status == "complete":
                summary = summarise(run, member)
                row["steps"] = summary.final_step
                for split, values in summary.final.items():
                    row |= {f"{split}/{metric}": value for metric, value in values.items()}
                main = summary.main
                for name in TRANSITION_COLUMNS:
                    row[f"transition_{name}"] = getattr(main, name) if main else math.nan
            rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row))  # points may set different fields
    return pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])


def _cell(value: object) -> object:
    """A swept value as a table cell (lists and mappings as JSON text)."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def read_results(sweep_dir: Path) -> pa.Table:
    path = sweep_dir / RESULTS
    if not path.is_file():
        raise IclLabError(f"no results table yet in {sweep_dir} (run the sweep first)")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise RunStoreError(
            f"{path} is damaged ({e}): run the sweep again to rebuild it from its runs"
        ) from None


def sweep_status(sweep_dir: Path) -> tuple[Counter, list[tuple[str, int, str]]]:
    """(counts by status, [(unit, points, status)]) read from the run directories; a run that
    cannot be opened, or is marked complete with its end missing, is "damaged: why"."""
    units = read_plan(sweep_dir)
    rows = []
    for unit in units:
        path = sweep_dir / "runs" / unit["unit"]
        try:
            run = Run.open(path) if (path / "manifest.json").is_file() else None
            if run is not None:
                run.check_whole()
            status = run.status if run is not None else "pending"
        except IclLabError as e:
            status = f"damaged: {e}"
        rows.append((unit["unit"], len(unit["points"]), status))
    counts = Counter()
    for _, n, status in rows:
        counts[status.split(":")[0]] += n
    return counts, rows
