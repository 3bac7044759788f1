"""Singh's few-shot label-pair task: sequence structure, splits, user feature files."""

import dataclasses

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.numpy import save_file

from icl_lab.errors import ConfigError
from icl_lab.tasks.base import Batch
from icl_lab.tasks.fewshot_pairs import FewShotPairsConfig, FewShotPairsTask


def task(**fields: object) -> FewShotPairsTask:
    return FewShotPairsTask(FewShotPairsConfig(**{"feature_dim": 16, "n_exemplars": 4, **fields}), seed=0)


def test_training_sequences() -> None:
    t = task()
    batch = t.sample(4000, torch.Generator().manual_seed(0))
    meta, x = batch.meta, batch.inputs
    assert x.shape == (4000, 5, 16 + 5)
    classes, labels, query = meta["item_classes"], meta["context_labels"], meta["query_class"]
    assert (classes < 50).all() and (classes[:, 0] != classes[:, 1]).all()
    matches = classes == query[:, None]
    assert torch.equal(matches.sum(1), torch.ones(4000, dtype=torch.long)), "one item of the query's class"
    assert matches[:, 0].float().mean().item() == pytest.approx(0.5, abs=0.03), "order shuffled"
    assert torch.equal(labels[matches], batch.targets[:, 0]) and torch.equal(
        meta["query_label"], batch.targets[:, 0]
    )
    pairs = {tuple(sorted(p)) for p in labels.tolist()}
    assert pairs == {tuple(p.tolist()) for p in t.train_pairs} and len(pairs) == 8
    assert torch.equal(x[:, 4, :16], x[:, 0, :16] * matches[:, :1] + x[:, 2, :16] * matches[:, 1:]), (
        "exemplar 0"
    )
    assert torch.equal(x[:, [1, 3], 16:].argmax(-1), labels) and (x[:, [1, 3], :16] == 0).all()
    assert (x[:, [0, 2, 4], 16:] == 0).all()


def test_heldout_splits() -> None:
    t = task()
    splits = {name: s(500, torch.Generator().manual_seed(1)) for name, s in t.eval_splits().items()}
    assert set(splits) == {"train", "heldout_pairs", "heldout_exemplars", "heldout_classes"}
    held = {tuple(sorted(p)) for p in splits["heldout_pairs"].meta["context_labels"].tolist()}
    assert held == {tuple(p.tolist()) for p in t.heldout_pairs}
    assert (splits["heldout_classes"].meta["item_classes"] >= 50).all()
    exemplars = splits["heldout_exemplars"]
    item = exemplars.inputs[:, 0, :16]
    stored = t.features[exemplars.meta["item_classes"][:, 0]]  # (n, exemplars, dim)
    which = (stored == item[:, None]).all(-1).float().argmax(1)
    assert (which >= 1).all(), "held-out exemplars only"


def test_members_drawn_together_are_each_members_own_batches() -> None:
    tasks = [task(), FewShotPairsTask(task().config, seed=1), FewShotPairsTask(task().config, seed=2)]
    features = [t.features.clone() for t in tasks]
    sample = FewShotPairsTask.members_sampler(tasks)
    alone = [torch.Generator().manual_seed(7 + m) for m in range(3)]
    together = [torch.Generator().manual_seed(7 + m) for m in range(3)]
    for step in range(3):
        expected = Batch.stack([t.training_sample(64, g, step) for t, g in zip(tasks, alone, strict=True)])
        batch = sample(64, together, step)
        for got, want in zip(
            [batch.inputs, batch.targets, batch.loss_mask, *batch.meta.values(), batch.table, batch.rows],
            [
                expected.inputs,
                expected.targets,
                expected.loss_mask,
                *expected.meta.values(),
                expected.table,
                expected.rows,
            ],
            strict=True,
        ):
            assert torch.equal(got, want) and got.stride() == want.stride()
    same_streams = zip(alone, together, strict=True)
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in same_streams)
    assert not torch.equal(batch.inputs[0], batch.inputs[1]), "each member its own world"
    assert all(torch.equal(t.features, f) for t, f in zip(tasks, features, strict=True)), "views of the same"
    assert tasks[1].tokens.data_ptr() == tasks[0].tokens.data_ptr() + tasks[0].tokens.nbytes

    class Own(FewShotPairsTask):
        """A user's subclass, which may sample otherwise."""

    assert Own.members_sampler([Own(task().config, 0), Own(task().config, 1)]) is None
    assert FewShotPairsTask.members_sampler([task(), task(n_train_classes=40)]) is None
    rows_alike = [task(n_train_classes=20, n_heldout_classes=60), task(n_train_classes=20, n_exemplars=8)]
    assert FewShotPairsTask.members_sampler(rows_alike) is None, "80 classes x 4 exemplars, 40 x 8"
    repeated = task(repeat={"fraction": 0.5, "bank_size": 10})
    assert FewShotPairsTask.members_sampler([repeated, repeated]) is None


def test_training_batches_name_the_few_rows_their_inputs_are_read_from() -> None:
    """Exemplar 0 of each training class and the labels: the table a read-in can project instead."""
    t = task(repeat={"fraction": 0.5, "bank_size": 10})
    g = torch.Generator().manual_seed(2)
    batches = {name: s(300, g) for name, s in t.eval_splits().items()} | {
        "repeated": t.training_sample(300, g, 3)
    }
    for name, batch in batches.items():
        if name in ("heldout_exemplars", "heldout_classes"):
            assert batch.table is None and batch.rows is None, name
            continue
        assert batch.table.shape == (50 + 5, 16 + 5) and batch.rows.shape == (300, 5), name
        assert torch.equal(batch.table[batch.rows], batch.inputs), name
    assert len(batches["train"].rows.unique()) == 55, "every row in use"
    cut = Batch.cat([batches["train"].select(torch.arange(3)), batches["heldout_classes"]])
    assert cut.table is None and cut.rows is None, "tables of one batch only"
    unnamed = dataclasses.replace(batches["train"], rows=None)  # a user's task may forget its rows
    assert unnamed.select(torch.arange(3)).rows is None, "left for the trainer's check to name"
    assert Batch.cat([unnamed, unnamed]).table is None and Batch.stack([unnamed, unnamed]).table is None


def test_a_read_in_of_table_rows_equals_the_read_in_of_every_token() -> None:
    from conftest import TINY_READOUT_MODEL
    from icl_lab.models.transformer import Transformer, TransformerConfig

    t = task()
    batch = t.sample(64, torch.Generator().manual_seed(0))
    for bias in (False, True):
        model = Transformer(TransformerConfig(**TINY_READOUT_MODEL, bias=bias), t.io(t.config))
        assert model.takes_table
        if bias:
            torch.nn.init.normal_(model.embed.b_E)
        outputs = []
        for kwargs in ({}, batch.table_rows()):
            model.zero_grad()
            logits = model(batch.inputs, **kwargs)
            logits.square().sum().backward()
            outputs.append((logits, model.embed.W_E.grad.clone()))
        (plain, plain_grad), (tabled, tabled_grad) = outputs
        torch.testing.assert_close(tabled, plain, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(tabled_grad, plain_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors"])
def test_feature_files_load(tmp_path, suffix: str) -> None:
    array = np.random.default_rng(0).normal(size=(160, 3, 16)).astype(np.float32)
    path = tmp_path / f"features{suffix}"
    if suffix == ".npy":
        np.save(path, array)
    elif suffix == ".npz":
        np.savez(path, features=array)
    else:
        save_file({"features": array}, str(path))
    t = task(features=str(path))
    assert np.allclose(t.features.numpy(), array[:150])
    what, digest = t.data_digest()
    assert what == f"task.features {path}" and task(features=str(path)).data_digest()[1] == digest
    assert task().data_digest() is None, "Gaussian features follow from the seed"
    if suffix == ".npy":  # a run checks this digest (test_text.py: a changed corpus is refused)
        array[149, 0, 0] += 1
        np.save(path, array)
        changed = task(features=str(path)).data_digest()[1]
        assert changed != digest
        array[159, 0, 0] += 1  # a class the task does not read
        np.save(path, array)
        assert task(features=str(path)).data_digest()[1] == changed


def test_bad_feature_files_are_config_errors(tmp_path) -> None:
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((10, 3, 16), np.float32))
    with pytest.raises(ConfigError, match="needs at least 150 classes"):
        task(features=str(small))
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((150, 16), np.float32))
    with pytest.raises(ConfigError, match="must hold a float array"):
        task(features=str(flat))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a tensor file")
    with pytest.raises(ConfigError, match="cannot read feature file"):
        task(features=str(broken))
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((150, 3, 16), np.nan, np.float32))
    with pytest.raises(ConfigError, match="NaN"):
        task(features=str(nan))
    with pytest.raises(ValidationError, match="feature file not found"):
        FewShotPairsConfig(features=str(tmp_path / "absent.npy"))
    with pytest.raises(ValidationError, match="must be 'gaussian' or a file"):
        FewShotPairsConfig(features="features.csv")
    with pytest.raises(ValidationError, match="must leave some"):
        FewShotPairsConfig(n_labels=3, n_heldout_pairs=3)
