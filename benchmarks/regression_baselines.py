"""In-context regression baselines over 1,280 prompts x all 41 prefix lengths (d = 20), one thread:
icl-lab's vectorised baselines vs a loop over prompts and prefixes calling numpy, in the same run
(the loop is timed on a slice of the prompts and scaled). Goal: well under a second for the
linear baselines.

    python benchmarks/regression_baselines.py [--prompts 1280] [--loop-prompts 64]
"""

import argparse
import time

import numpy as np
import torch

from common import write_results
from icl_lab.analysis.function_classes import baselines_for
from icl_lab.baselines.regression import least_squares
from icl_lab.tasks.function_classes import FunctionClassesConfig, FunctionClassesTask


def numpy_loop(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Minimum-norm least squares prefix by prefix: the straightforward implementation."""
    out = np.zeros(ys.shape)
    for b in range(xs.shape[0]):
        for k in range(1, xs.shape[1]):
            out[b, k] = xs[b, k] @ np.linalg.lstsq(xs[b, :k], ys[b, :k], rcond=None)[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=1280)
    parser.add_argument("--loop-prompts", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = FunctionClassesTask(FunctionClassesConfig(dim=20, n_points=41), seed=0)
    batch = task.sample(args.prompts, torch.Generator().manual_seed(0))
    xs, ys = batch.meta["xs"], batch.meta["ys"]
    rows = []
    print(f"{'baseline':16}{'seconds':>10}")
    for name, fn in baselines_for(task.config).items():
        fn(xs[:8], ys[:8])
        start = time.perf_counter()
        fn(xs, ys)
        seconds = time.perf_counter() - start
        rows.append({"name": name, "seconds": seconds})
        print(f"{name:16}{seconds:10.3f}")
    start = time.perf_counter()
    loop = numpy_loop(xs[: args.loop_prompts].double().numpy(), ys[: args.loop_prompts].double().numpy())
    scaled = (time.perf_counter() - start) * args.prompts / args.loop_prompts
    diff = np.abs(least_squares(xs, ys)[: args.loop_prompts].double().numpy() - loop).max()
    rows.append({"name": "numpy loop (least squares)", "seconds": scaled, "max_diff": float(diff)})
    print(
        f"{'numpy loop':16}{scaled:10.3f}   (least squares, scaled from {args.loop_prompts} prompts; "
        f"max |diff| {diff:.1e})"
    )
    print(f"{args.prompts} prompts x {xs.shape[1]} prefix lengths, d = {xs.shape[2]}")
    print(f"wrote {write_results('regression_baselines', {'prompts': args.prompts, 'rows': rows})}")


if __name__ == "__main__":
    main()
