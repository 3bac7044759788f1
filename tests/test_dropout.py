"""Dropout (embed_dropout, attn_dropout): only while training, masks seeded by run seed and step."""

from pathlib import Path

import pytest
import torch

from conftest import TINY_FEWSHOT, TINY_READOUT_MODEL, tiny_config
from icl_lab.errors import ConfigError
from icl_lab.experiment import build_model, check_ensemble
from icl_lab.store.run import Run
from icl_lab.sweeps.packing import ensembles
from icl_lab.training.trainer import resume, train
from test_trainer import assert_identical_runs, final_params, killed_copy

DROPPING = {"embed_dropout": 0.2, "attn_dropout": 0.3}


@pytest.mark.parametrize("path", ["fused", "explicit pattern", "tiny heads"])
def test_dropout_acts_in_training_only_on_every_attention_path(path: str) -> None:
    if path == "tiny heads":  # Singh-like: many tiny heads take Attention.tiny_attention
        task, model, inputs = TINY_FEWSHOT, {**TINY_READOUT_MODEL, "n_heads": 8}, torch.randn(64, 5, 17)
    else:
        task, model, inputs = {}, {}, torch.randint(16, (8, 16))
    rates = (
        [{"attn_dropout": 0.3}] if path == "tiny heads" else [{"attn_dropout": 0.3}, {"embed_dropout": 0.2}]
    )
    for rate in rates:
        dropping, plain = (build_model(tiny_config(task=task, model={**model, **r})) for r in (rate, {}))
        plain.load_state_dict(dropping.state_dict())
        assert not dropping.training, "built in eval mode"
        if path == "explicit pattern":  # a hook on the pattern takes the explicit path
            for m in (dropping, plain):
                m.add_hook("blocks.0.attn.hook_pattern", lambda x, hook: x)
        with torch.no_grad():
            assert torch.equal(dropping(inputs), plain(inputs)), f"{rate}: evaluation drops nothing"
            dropping.train()
            first, second = dropping(inputs), dropping(inputs)
        assert not torch.equal(first, second) and not torch.equal(first, plain(inputs)), rate


def test_a_dropout_run_resumes_bit_identically_and_differs_from_one_without(tmp_path: Path) -> None:
    config = tiny_config(model=DROPPING)
    full = train(config, str(tmp_path / "a"), progress=False)
    again = train(config, str(tmp_path / "b"), progress=False)
    assert_identical_runs(full, again)
    cut = killed_copy(full, tmp_path / "c", last_kept=8)
    assert_identical_runs(full, resume(Run.open(cut), progress=False))
    plain = train(tiny_config(), str(tmp_path / "d"), progress=False)
    a, b = final_params(full), final_params(plain)
    assert any(not torch.equal(a[k], b[k]) for k in a), "the masks changed training"


def test_dropout_masks_leave_the_global_generator_as_a_run_without_them_does(tmp_path: Path) -> None:
    after = []
    for i, model in enumerate([DROPPING, {}]):
        torch.manual_seed(123)
        train(tiny_config(model=model), str(tmp_path / str(i)), progress=False)
        after.append(torch.get_rng_state())
    assert torch.equal(*after)


def test_models_with_dropout_do_not_pack_into_ensembles() -> None:
    members = [tiny_config(model=DROPPING, seed=seed) for seed in (0, 1)]
    with pytest.raises(ConfigError, match="models with dropout do not train as one ensemble"):
        check_ensemble(members)
    assert ensembles(members, "always", workers=1, max_ensemble=16) == [[0], [1]]
    plain = [tiny_config(seed=seed) for seed in (0, 1)]
    assert ensembles(plain, "always", workers=1, max_ensemble=16) == [[0, 1]]


def test_cuda_graphs_do_not_take_dropout() -> None:
    with pytest.raises(ConfigError, match="a model with dropout reseeds its masks every step"):
        tiny_config(model=DROPPING, training={"cuda_graphs": True, "length": {"steps": 12}})


def test_mixer_models_take_embedding_dropout() -> None:
    config = tiny_config(
        task={"name": "induction", "vocab_size": 16, "seq_len": 16, "min_prefix": 2, "n_copies": None},
        model={"name": "mixer_lm", "mixer": "gru", "n_layers": 1, "d_model": 16, "embed_dropout": 0.2},
    )
    model = build_model(config)
    tokens = torch.randint(16, (4, 16))
    with torch.no_grad():
        evaluated = model(tokens)
        model.train()
        assert not torch.equal(model(tokens), evaluated)


def test_a_compiled_dropout_run_resumes_bit_identically(tmp_path: Path) -> None:
    """Compiled, the masks come from TorchInductor's generator (other masks than eager), seeded the
    same way from the run seed and step."""
    config = tiny_config(model=DROPPING, training={"compile": "on", "batch_size": 8, "length": {"steps": 12}})
    full = train(config, str(tmp_path / "a"), progress=False)
    cut = killed_copy(full, tmp_path / "b", last_kept=8)
    assert_identical_runs(full, resume(Run.open(cut), progress=False))


def test_a_graft_donor_loaded_mid_step_moves_no_mask(tmp_path: Path) -> None:
    """The donor loads inside the first step a process trains (grafts load lazily): a resumed
    process loads it at another step than the fresh run did."""
    from icl_lab.interventions import graft

    donor = train(tiny_config(name="donor"), str(tmp_path / "donor"), progress=False)
    clamps = [{"kind": "graft", "hook": "blocks.0.hook_attn_out", "source": str(donor.path)}]
    graft.donor.cache_clear()
    full = train(tiny_config(model=DROPPING, clamps=clamps), str(tmp_path / "full"), progress=False)
    cut = killed_copy(full, tmp_path / "cut", last_kept=8)
    graft.donor.cache_clear()  # as a new process
    assert_identical_runs(full, resume(Run.open(cut), progress=False))
