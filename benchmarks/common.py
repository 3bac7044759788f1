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


# Matrix products and the fused attention kernel: a compiled step calls these as they are and fuses
# only what lies between them.
KERNELS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
)


def kernel_seconds(step: Callable[[], object], n: int) -> float:
    """Seconds per call of step spent inside KERNELS (their self time under torch.profiler)."""
    from torch.profiler import profile

    step()
    with profile() as prof:
        for _ in range(n):
            step()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in KERNELS) / 1e6 / n


def kernel_ceiling(
    plain: Callable[[], object], compiled: Callable[[], object], plain_s: float, n: int
) -> dict:
    """On a CPU: the kernel time of a plain and a compiled step, and the most the compiled one can gain
    over the plain step's plain_s seconds while it calls its kernels (printed and returned)."""
    times = {"plain PyTorch": kernel_seconds(plain, n), "icl-lab compiled": kernel_seconds(compiled, n)}
    ceiling = plain_s / times["icl-lab compiled"]
    print(
        f"matrix-product and attention kernels: {times['plain PyTorch'] * 1e3:.2f} ms of a plain step, "
        f"{times['icl-lab compiled'] * 1e3:.2f} ms of a compiled icl-lab step, which can thus be at most "
        f"{ceiling:.2f}x the plain step"
    )
    return {
        "kernel_ms_per_step": {k: t * 1e3 for k, t in times.items()},
        "compiled_ceiling_vs_plain": ceiling,
    }


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
