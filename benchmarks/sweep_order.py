"""Unequal units on 2 local workers, handed out largest first (what the executors do) against in
point order: three reddy_fast runs of --steps steps, then one of three times as many (last in
point order, where a long unit keeps one worker busy while the other idles). The two orders take
turns, --repeats each; medians.

    python benchmarks/sweep_order.py [--steps 200] [--repeats 3]
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from common import write_results
from icl_lab.sweeps import execute as executors
from icl_lab.sweeps.execute import Job, execute
from sweep_throughput import configs, timed


def order_time(largest: bool, steps: int) -> float:
    """Seconds for three runs of `steps` steps then one of 3 x steps, on 2 local workers."""
    runs = Path(tempfile.mkdtemp())
    members = [*configs("reddy_fast", 3, steps, "cpu"), *configs("reddy_fast", 1, 3 * steps, "cpu")]
    jobs = [Job(runs / f"r{i}", (c,)) for i, c in enumerate(members)]
    given = executors.largest_first
    if not largest:
        executors.largest_first = lambda jobs, workers: list(range(len(jobs)))
    try:
        return timed(lambda: execute(jobs, "local", 2, progress=False))
    finally:
        executors.largest_first = given


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for largest in (False, True):
            times[largest].append(order_time(largest, args.steps))
    point_order, largest_first = statistics.median(times[False]), statistics.median(times[True])
    record = {
        "steps": args.steps,
        "repeats": args.repeats,
        "point_order_s": point_order,
        "largest_first_s": largest_first,
        "speedup": point_order / largest_first,
    }
    print(f"point order {point_order:.1f} s, largest first {largest_first:.1f} s: ", end="")
    print(f"{point_order / largest_first:.2f}x (2 workers, medians of {args.repeats})")
    print(f"wrote {write_results('sweep_order_cpu', record)}")


if __name__ == "__main__":
    main()
