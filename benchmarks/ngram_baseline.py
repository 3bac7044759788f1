"""In-context n-gram baselines: icl-lab's incremental counts vs recounting the prompt at every position
(the reference code's algorithm, benchmarks/ngram_recount.py), on the default RegBench generator
(prompts of up to 1024 tokens), one thread. Seconds per 1,000 prompts; the recount is timed on a
few prompts and scaled. Both give the same distributions (checked here on the timed prompts).

    python benchmarks/ngram_baseline.py [--prompts 512] [--recount-prompts 3]
"""

import argparse
import time

import torch

from common import write_results
from icl_lab.baselines.ngram import ngram_distributions
from icl_lab.tasks.regbench import RegBenchConfig, RegBenchTask
from ngram_recount import recount_distributions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--recount-prompts", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = RegBenchTask(RegBenchConfig(), seed=0)
    tokens = task.fixed["test"][0][: args.prompts]
    print(f"{'n':>3}{'incremental s/1000':>20}{'recount s/1000':>17}{'speed-up':>11}{'max |diff|':>12}")
    rows = []
    for n in (1, 2, 3, 4):
        start = time.perf_counter()
        ours = torch.cat([ngram_distributions(part, n) for part in tokens.split(512)])
        incremental = (time.perf_counter() - start) / len(tokens) * 1000
        start = time.perf_counter()
        recount = [recount_distributions(p.tolist(), n) for p in tokens[: args.recount_prompts]]
        slow = (time.perf_counter() - start) / args.recount_prompts * 1000
        dense = torch.zeros(args.recount_prompts, tokens.shape[1], 20)
        for b, per_position in enumerate(recount):
            for t, probabilities in enumerate(per_position):
                for letter, p in probabilities.items():
                    dense[b, t, letter] = p
        diff = (ours[: args.recount_prompts] - dense).abs().max().item()
        rows.append(
            {"n": n, "incremental_s_per_1000": incremental, "recount_s_per_1000": slow, "max_diff": diff}
        )
        print(f"{n:3}{incremental:20.2f}{slow:17.0f}{slow / incremental:10.0f}x{diff:12.1e}")
    print(
        f"prompts: {len(tokens)} timed incrementally, {args.recount_prompts} recounted; "
        f"{tokens.shape[1]} tokens each"
    )
    path = write_results(
        "ngram_baseline",
        {
            "prompts": len(tokens),
            "recount_prompts": args.recount_prompts,
            "seq_len": tokens.shape[1],
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
