"""Shared benchmark helpers: interleaved timing with medians, and result files."""

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from icl_lab.training.trainer import Trainer

RESULTS = Path(__file__).parent / "results"


def time_steps(step: Callable[[], object], n: int) -> float:
    """Seconds per call of step, averaged over n calls (CUDA synchronised)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    sync()
    start = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return (time.perf_counter() - start) / n


def interleaved(
    contenders: dict[str, Callable[[], object]], steps: int, repeats: int, warmup: int = 20
) -> dict[str, float]:
    """Median seconds per step of each contender, timed in turns so drift hits all alike."""
    for step in contenders.values():
        time_steps(step, warmup)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, step in contenders.items():
            times[name].append(time_steps(step, steps))
    return {name: statistics.median(t) for name, t in times.items()}


def kernel_seconds(step: Callable[[], object], n: int, kernels: tuple[str, ...]) -> float:
    """Seconds per call of step spent inside the named ATen kernels (their self time under
    torch.profiler): the floor any step calling the same kernels on the same shapes stays above."""
    from torch.profiler import profile

    step()
    with profile() as prof:
        for _ in range(n):
            step()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in kernels) / 1e6 / n


def started_trainer(config: str, overrides: list[str], seeds: int = 1) -> tuple["Trainer", float]:
    """An icl-lab trainer of a bundled config (an ensemble of `seeds` members), and the seconds its
    first step took (the compile, with training.compile=on)."""
    import tempfile

    from icl_lab.experiment import load_config
    from icl_lab.store.run import Run
    from icl_lab.training.trainer import Trainer

    members = [load_config(config, [*overrides, f"seed={seed}"]) for seed in range(seeds)]
    trainer = Trainer(Run.create(members, Path(tempfile.mkdtemp())), progress=False)
    start = time.perf_counter()
    trainer.train_step()
    return trainer, time.perf_counter() - start


def write_results(name: str, record: dict) -> Path:
    """benchmarks/results/<name>.json with the date and torch version added."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps({**record, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}, indent=1)
    )
    return path


def table(
    median: dict[str, float], baseline: str, tokens_per_step: int, flops_per_step: float | None = None
) -> list[dict]:
    """Print steps/s, tokens/s (GFLOP/s) and speed relative to the baseline; return the rows."""
    rows = []
    print(
        f"{'':24}{'steps/s':>10}{'tokens/s':>12}"
        + (f"{'GFLOP/s':>10}" if flops_per_step else "")
        + f"{'vs ' + baseline:>22}"
    )
    for name, seconds in median.items():
        row = {
            "name": name,
            "steps_per_s": 1 / seconds,
            "tokens_per_s": tokens_per_step / seconds,
            "speed_vs_baseline": median[baseline] / seconds,
        }
        gflops = f"{flops_per_step / seconds / 1e9:10.2f}" if flops_per_step else ""
        if flops_per_step:
            row["gflops"] = flops_per_step / seconds / 1e9
        print(
            f"{name:24}{row['steps_per_s']:10.1f}{row['tokens_per_s']:12.0f}{gflops}{row['speed_vs_baseline']:22.3f}"
        )
        rows.append(row)
    return rows
