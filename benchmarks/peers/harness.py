"""Parent side of a peer benchmark: start the authors' step and icl-lab's step in two long-lived
workers pinned to one core, time them in alternating turns, and write the medians and their ratio."""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/, for common

from common import write_results  # noqa: E402

ONE_THREAD = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


def parser(description: str) -> argparse.ArgumentParser:
    """The command line of the peer scripts."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--peer-repo", type=Path, required=True, help="local checkout of the authors' code")
    p.add_argument("--peer-python", type=Path, required=True, help="python of a venv with JAX etc.")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for icl-lab's config (repeatable)")  # fmt: skip
    p.add_argument("--steps", type=int, default=100, help="steps per timed turn")
    p.add_argument("--repeats", type=int, default=5, help="timed turns per contender")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps per contender after the first")
    p.add_argument("--core", type=int, default=1, help="CPU core both workers are pinned to")
    return p


class Worker:
    """One pinned worker process speaking worker.py's line protocol."""

    def __init__(self, name: str, command: list[str], core: int) -> None:
        self.name = name
        fd, log = tempfile.mkstemp(prefix=f"peer-{name}-", suffix=".log")
        self.log = Path(log)
        self.process = subprocess.Popen(
            ["taskset", "-c", str(core), *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=fd,
            text=True,
            env={**os.environ, **ONE_THREAD},
        )
        os.close(fd)

    def receive(self) -> dict:
        """The worker's next protocol line; its log's tail if it died instead."""
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            tail = self.log.read_text()[-3000:]
            raise SystemExit(f"{self.name} worker exited ({self.process.returncode}); log tail:\n{tail}")
        return json.loads(line)

    def run(self, steps: int) -> float:
        """Seconds per step over `steps` steps."""
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        return self.receive()["s_per_step"]

    def close(self) -> None:
        """End the worker and remove its log."""
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        self.process.wait()
        self.log.unlink()


def compare(commands: dict[str, list[str]], steps: int, repeats: int, warmup: int, core: int) -> dict:
    """Per contender: setup, first step and per-turn seconds per step, turns alternating (ABBA...)."""
    workers, ready = {}, {}
    try:
        for name, command in commands.items():  # one at a time: no setup or compile overlaps another
            workers[name] = Worker(name, command, core)
            ready[name] = first = workers[name].receive()
            print(f"{name}: setup {first['setup_s']:.2f} s, first step {first['first_step_s']:.2f} s")
        for worker in workers.values():
            worker.run(warmup)
        turns: dict[str, list[float]] = {name: [] for name in workers}
        names = list(workers)
        for r in range(repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                turns[name].append(workers[name].run(steps))
                print(f"  turn {r + 1} {name}: {turns[name][-1] * 1e3:.2f} ms/step")
    finally:
        for worker in workers.values():
            worker.close()
    return {name: {**ready[name], "s_per_step_turns": turns[name]} for name in workers}


def git_state(path: Path, pathspec: str = ".") -> dict | None:
    """HEAD commit of the git work tree holding path, and whether pathspec has uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    return {"commit": commit, "uncommitted_changes": bool(git("status", "--porcelain", "--", pathspec))}


def main(name: str, config: str, peer_driver: str, args: argparse.Namespace, notes: str) -> None:
    """Check the overrides, time both contenders, print and write
    benchmarks/results/peers_<name>[_compiled].json."""
    import icl_lab
    from icl_lab.experiment import load_config

    try:
        load_config(config, args.overrides)
    except Exception as error:  # an override icl-lab does not know (yet) stops the run here
        raise SystemExit(f"icl-lab rejected the overrides {args.overrides}: {error}") from None
    commands = {
        "peer": [str(args.peer_python), str(HERE / peer_driver), str(args.peer_repo.resolve())],
        "ours": [sys.executable, str(HERE / "ours_worker.py"), config, *args.overrides],
    }
    result = compare(commands, args.steps, args.repeats, args.warmup, args.core)
    ms = {who: statistics.median(r["s_per_step_turns"]) * 1e3 for who, r in result.items()}
    ratio = ms["peer"] / ms["ours"]
    print(f"peer {ms['peer']:.2f} ms/step, icl-lab {ms['ours']:.2f} ms/step: peer/ours = {ratio:.2f}")
    # icl-lab's step calls these kernels whatever else gets faster: a bound on peer / ours
    kernel_ms = result["ours"]["kernel_s_per_step"] * 1e3
    ceiling = ms["peer"] / kernel_ms
    print(
        f"icl-lab's matrix-product and attention kernels take {kernel_ms:.2f} ms of its step: "
        f"peer/ours can be at most {ceiling:.2f} with them"
    )
    compiled = "_compiled" if "training.compile=on" in args.overrides else ""
    out = write_results(
        f"peers_{name}{compiled}",
        {
            "peer_repo": str(args.peer_repo),
            "peer_git": git_state(args.peer_repo, "*.py"),  # large data files may be absent
            "icl_lab_path": str(Path(icl_lab.__file__).parent),
            "icl_lab_git": git_state(Path(icl_lab.__file__).parent),
            "config": config,
            "overrides": args.overrides,
            "device": f"cpu core {args.core}, one thread each",
            "steps_per_turn": args.steps,
            "repeats": args.repeats,
            "warmup_steps": args.warmup,
            "peer_ms_per_step": ms["peer"],
            "ours_ms_per_step": ms["ours"],
            "ratio_peer_over_ours": ratio,
            "ours_kernel_ms_per_step": kernel_ms,
            "ceiling_peer_over_ours_kernels": ceiling,
            "contenders": result,
            "notes": notes,
        },
    )
    print(f"wrote {out}")
