"""The local executor and the reproduction machinery (claims, verdicts, files)."""

import json
from pathlib import Path

import torch

from conftest import tiny_config
from icl_lab.experiment import ExperimentConfig
from icl_lab.reproduce import REPRODUCTIONS, Claim, reproduce
from icl_lab.reproduce.base import Reproduction
from icl_lab.reproduce.reddy import _trend
from icl_lab.store.run import Run
from icl_lab.sweeps.execute import run_configs
from icl_lab.training.trainer import train


def test_local_executor_runs_in_parallel_and_matches_in_process_training(tmp_path: Path) -> None:
    configs = [tiny_config(seed=s, name=f"s{s}") for s in (1, 2, 3)]
    runs = run_configs(configs, tmp_path / "pool", workers=2, progress=False)
    assert [r.config.seed for r in runs] == [1, 2, 3], "runs come back in the order given"
    alone = train(configs[1], str(tmp_path / "alone"), progress=False)
    a, b = alone.load_checkpoint().group("param"), runs[1].load_checkpoint().group("param")
    assert all(torch.equal(a[k], b[k]) for k in a)


@REPRODUCTIONS.register("tiny-test")
class Tiny(Reproduction):
    title = "a two-run reproduction for the tests"
    quick_budget = "seconds"

    def experiments(self, quick: bool) -> dict[str, ExperimentConfig]:
        return {"a": tiny_config(name="a"), "b": tiny_config(name="b", seed=9)}

    def claims(self, runs: dict[str, Run], quick: bool) -> list[Claim]:
        losses = {k: r.curve("loss", "train")[1][-1] for k, r in runs.items()}
        return [
            Claim("both runs finish", "-", ", ".join(r.status for r in runs.values()), True),
            Claim("the seeds give identical losses", "-", f"{losses['a']:.3f} vs {losses['b']:.3f}", False),
        ]


def test_reproduce_writes_claims(tmp_path: Path) -> None:
    claims, out = reproduce("tiny-test", quick=True, runs_dir=tmp_path, workers=1, progress=False)
    assert [c.reproduced for c in claims] == [True, False]
    record = json.loads((out / "claims.json").read_text())
    assert record["quick"] and len(record["claims"]) == 2
    table = (out / "claims.md").read_text()
    assert "| both runs finish | - | complete, complete | reproduced |" in table
    assert "not reproduced" in table


def test_reproduce_command_prints_verdicts(cli, tmp_path: Path) -> None:
    code, out, _ = cli(
        "reproduce", "tiny-test", "--quick", "--workers", "1", "--runs-dir", tmp_path, "--quiet"
    )
    assert code == 0
    assert "not reproduced" in out and "1 of 2 claims reproduced" in out
    code, _, err = cli("reproduce", "nobody")
    assert code == 2 and "unknown reproduction 'nobody'" in err


def test_trend_judgement() -> None:
    assert _trend([0.02, 0.09, 0.22, 0.49], rising=True)
    assert _trend([1.0, 0.69, 0.41, 0.21], rising=False)
    assert not _trend([0.07, 0.81, 0.77, 0.71], rising=True), "a drop beyond the tolerance breaks the trend"
    assert not _trend([0.2, 0.22, 0.25, 0.3], rising=True), "too small a change is no trend"
