"""Vmapped ensembles: each member trains exactly as it would alone."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_FEWSHOT, TINY_READOUT_MODEL, tiny_config
from icl_lab.errors import ComponentError, ConfigError
from icl_lab.models.transformer import Transformer
from icl_lab.store.run import Run
from icl_lab.tasks import Batch
from icl_lab.tasks.fewshot_pairs import FewShotPairsTask
from icl_lab.training.trainer import Trainer, resume, train

BASE = {
    "task": TINY_FEWSHOT,
    "model": TINY_READOUT_MODEL,
    # 64 sequences x 4 heads: eager attention takes the tiny heads' path (transformer.tiny_heads)
    "training": {"length": {"steps": 30}, "optimizer": {"lr": 0.01}, "batch_size": 64},
}


def members() -> list:
    slower = {**BASE["training"], "optimizer": {"lr": 0.003}}
    return [
        tiny_config(**BASE, seed=1),
        tiny_config(
            **{**BASE, "training": slower}, seed=2, clamps=[{"kind": "induction_match", "heads": ["1.0"]}]
        ),
        tiny_config(
            **{**BASE, "task": {**TINY_FEWSHOT, "n_train_classes": 12}},
            seed=3,
            clamps=[
                {"kind": "ablate_preserving", "heads": ["0.1"], "preserve": "pattern"},
                {"kind": "copy", "head": "1.2"},
            ],
        ),
        tiny_config(
            **BASE, seed=4, clamps=[{"kind": "layer1"}, {"kind": "previous_token", "heads": ["0.0"]}]
        ),
    ]


@pytest.mark.filterwarnings("error:There is a performance drop")
def test_each_member_equals_its_single_run(tmp_path: Path) -> None:
    configs = members()
    ensemble = train(configs, str(tmp_path / "ensemble"), progress=False)
    assert ensemble.manifest["members"] == 4 and Run.open(ensemble.path).configs == configs
    stacked = ensemble.parameters()
    for i, config in enumerate(configs):
        alone = train(config, str(tmp_path / f"alone{i}"), progress=False)
        params = alone.parameters()
        for name, value in params.items():
            assert torch.allclose(stacked[name][i], value[0], atol=1e-4), (i, name)
        for split in ("train", "heldout_classes"):
            a, b = alone.curve("loss", split)[1], ensemble.curve("loss", split, member=i)[1]
            np.testing.assert_allclose(a, b, atol=1e-5)
        assert torch.allclose(
            ensemble.model(member=i).blocks[1].attn.W_Q, alone.model().blocks[1].attn.W_Q, atol=1e-4
        )


def test_members_sampled_together_equal_their_single_runs(tmp_path: Path) -> None:
    """Members of one task's shape draw their batches together (FewShotPairsTask.members_sampler)."""
    configs = [tiny_config(**BASE, seed=seed) for seed in (1, 2)]
    ensemble = Run.create(configs, tmp_path / "ensemble")
    trainer = Trainer(ensemble, progress=False)
    assert trainer._sample_members is not None
    trainer.fit()
    for i, config in enumerate(configs):
        alone = train(config, str(tmp_path / f"alone{i}"), progress=False)
        for name, value in alone.parameters().items():
            assert torch.allclose(ensemble.parameters()[name][i], value[0], atol=1e-4), (i, name)


def test_training_reads_in_the_table_rows_a_task_names_and_refuses_rows_that_are_not_its_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Singh's training batches reach the model as its table's rows (Batch.table), whose read-in
    projects 15 rows instead of 320 tokens; the same training as from every token, within rounding."""
    config = tiny_config(**BASE)
    calls = []
    forward = Transformer.forward

    def spy(self: Transformer, inputs: torch.Tensor, **table_rows: torch.Tensor) -> torch.Tensor:
        calls.append(sorted(table_rows))
        return forward(self, inputs, **table_rows)

    with monkeypatch.context() as patched:
        patched.setattr(Transformer, "forward", spy)
        trainer = Trainer(Run.create(config, tmp_path / "spied"), progress=False)
        calls.clear()
        trainer.train_step()
    assert calls == [["rows", "table"]]
    tabled = train(config, str(tmp_path / "tabled"), progress=False).parameters()
    with monkeypatch.context() as patched:
        patched.setattr(Batch, "table_rows", lambda self: {})
        every_token = train(config, str(tmp_path / "every"), progress=False).parameters()
    for name, value in every_token.items():
        torch.testing.assert_close(tabled[name], value, rtol=1e-4, atol=1e-5)

    sample = FewShotPairsTask.sample
    wrong = r"task 'fewshot_pairs' sampled inputs that are not its table's rows \(Batch.table at Batch.rows\)"
    for damage in (lambda rows: rows.roll(1, 0), lambda rows: None):  # another sequence's rows, none

        def damaged(self: FewShotPairsTask, n: int, g: torch.Generator, damage=damage) -> Batch:
            batch = sample(self, n, g)
            return dataclasses.replace(batch, rows=damage(batch.rows))

        monkeypatch.setattr(FewShotPairsTask, "sample", damaged)
        with pytest.raises(ComponentError, match=wrong):
            train(config, str(tmp_path / "wrong"), progress=False)


def test_ensemble_resume_is_bit_identical(tmp_path: Path) -> None:
    from test_trainer import assert_identical_runs, killed_copy

    configs = members()[:2]
    full = train(configs, str(tmp_path / "a"), progress=False)
    cut = killed_copy(full, tmp_path / "b", last_kept=8)
    assert_identical_runs(full, resume(Run.open(cut), progress=False))


def test_members_of_different_shapes_are_refused(tmp_path: Path) -> None:
    wide = tiny_config(**{**BASE, "model": {**TINY_READOUT_MODEL, "d_model": 32}})
    with pytest.raises(ConfigError, match=r"ensemble members differ in model\.d_model; they may differ only"):
        train([members()[0], wide], str(tmp_path), progress=False)
    other_task = tiny_config(**{**BASE, "task": {**BASE["task"], "feature_dim": 16}})
    with pytest.raises(ConfigError, match="members differ in the task inputs or outputs; they may"):
        train([members()[0], other_task], str(tmp_path), progress=False)
    text = tiny_config(task={"name": "text_lm", "corpus": "shakespeare"})  # its defaults differ too
    with pytest.raises(ConfigError, match=r"ensemble members differ in task\.name; they may differ only"):
        train([tiny_config(), text], str(tmp_path), progress=False)


def test_eval_of_every_member_equals_what_the_trainer_logged(cli, tmp_path: Path) -> None:
    """`icl-lab eval RUN --member k` evaluates member k's own task, seed, batches and clamps."""
    configs = members()[:3]  # different seeds, learning rates, clamps and a task field
    run = train(configs, str(tmp_path), progress=False)
    table = run.metrics.to_pylist()
    for member in range(3):
        code, out, err = cli("eval", run.path, "--member", str(member))
        assert code == 0, err
        printed = _printed_metrics(out)
        logged = {
            (r["split"], r["metric"]): r["value"]
            for r in table
            if r["member"] == member and r["step"] == 30 and r["head"] is None and r["split"] in printed
        }
        assert logged and len(printed) == 4
        for (split, metric), value in logged.items():
            assert printed[split][metric] == pytest.approx(value, abs=6e-5), (member, split, metric)


def _printed_metrics(out: str) -> dict[str, dict[str, float]]:
    """{split: {metric: value}} from eval's tables (4 decimals)."""
    found: dict[str, dict[str, float]] = {}
    split = ""
    for line in out.splitlines():
        if line.startswith("split "):
            split = line.split()[1]
            found[split] = {}
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if split and len(cells) == 2:
            try:
                found[split][cells[0]] = float(cells[1])
            except ValueError:
                continue
    return found


def test_an_ensembles_config_files_are_checked_like_a_single_runs(tmp_path: Path) -> None:
    """config.yaml is member 0's copy, outside members.yaml's hash: an edit to it is refused on
    resume, and an ensemble without its members.yaml is not read as a one-member run."""
    import json
    import shutil

    import yaml

    from icl_lab.errors import RunStoreError

    members = [tiny_config(seed=seed, training={"length": {"steps": 4}}) for seed in (3, 4)]
    run = train(members, str(tmp_path), progress=False)
    cut = tmp_path / "cut"
    shutil.copytree(run.path, cut)
    manifest = json.loads((cut / "manifest.json").read_text())
    (cut / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    edited = yaml.safe_load((cut / "config.yaml").read_text())
    edited["training"]["optimizer"]["lr"] = 0.5
    (cut / "config.yaml").write_text(yaml.safe_dump(edited))
    with pytest.raises(
        RunStoreError, match=r"its config.yaml \(member 0's config\) was changed since the run started"
    ):
        resume(Run.open(cut), progress=False)
    for garbage, why in (
        ("42\n", "it is not a list of member configs"),
        ("- 42\n", "it is not a list of member configs"),
    ):
        (cut / "members.yaml").write_text(garbage)
        with pytest.raises(RunStoreError, match=rf"run {cut}: its members.yaml cannot be read \(.*{why}"):
            Run.open(cut)
    one = yaml.safe_load((run.path / "members.yaml").read_text())[:1]  # cut short: one of two
    (cut / "members.yaml").write_text(yaml.safe_dump(one))
    with pytest.raises(RunStoreError, match=r"members.yaml holds 1 member config\(s\), its manifest says 2"):
        Run.open(cut)
    (cut / "members.yaml").unlink()
    with pytest.raises(RunStoreError, match=r"its members.yaml is missing \(the run has 2 members;"):
        Run.open(cut)


def test_tied_unembeddings_train_as_one_ensemble_as_they_would_alone(tmp_path: Path) -> None:
    """W_U = W_E^T reads each member's own embedding under vmap."""
    # no biases: b_K's gradient is rounding noise (softmax ignores it), which Adam scales up
    tied = {"tie_unembed": True, "init": "gpt2", "attn_only": False, "bias": False}
    configs = [
        tiny_config(model=tied, seed=s, training={"length": {"steps": 12}, "optimizer": {"lr": 0.01}})
        for s in (1, 2)
    ]
    stacked = train(configs, str(tmp_path / "ensemble"), progress=False).parameters()
    assert "unembed.W_U" not in stacked
    for i, config in enumerate(configs):
        alone = train(config, str(tmp_path / f"alone{i}"), progress=False).parameters()
        for name, value in alone.items():
            assert torch.allclose(stacked[name][i], value[0], atol=1e-5), (i, name)


def test_scalar_readout_biases_train_as_one_ensemble_as_they_would_alone(tmp_path: Path) -> None:
    """A (1,)-shaped bias per hidden readout layer (Reddy's) stacks to (members, 1) under vmap."""
    scalar = {**TINY_READOUT_MODEL, "readout": {"hidden": [8, 8], "bias": False, "hidden_bias": "scalar"}}
    short = {**BASE["training"], "length": {"steps": 12}}
    configs = [tiny_config(**{**BASE, "model": scalar, "training": short}, seed=s) for s in (1, 2)]
    stacked = train(configs, str(tmp_path / "ensemble"), progress=False).parameters()
    assert stacked["readout.1.bias"].shape == (2, 1)
    for i, config in enumerate(configs):
        alone = train(config, str(tmp_path / f"alone{i}"), progress=False).parameters()
        for name, value in alone.items():
            assert torch.allclose(stacked[name][i], value[0], atol=1e-4), (i, name)
