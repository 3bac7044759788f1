"""RegBench: generated languages checked against automata-lib, splits, caching, and the
validity/TVD metrics against closed forms."""

import multiprocessing
import os
from pathlib import Path

import pytest
import torch
from automata.fa.dfa import DFA

from icl_lab.errors import ConfigError
from icl_lab.metrics.base import EvalContext
from icl_lab.metrics.regbench import tvd, validity_accuracy
from icl_lab.tasks.regbench import (
    LETTERS,
    PAD,
    SEP,
    RegBenchConfig,
    RegBenchTask,
    generate_dfas,
    sample_prompts,
)

SMALL = {"n_train_dfas": 60, "n_val_dfas": 15, "n_test_dfas": 15, "seq_len": 256}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICL_LAB_CACHE", str(tmp_path / "cache"))


def task(**overrides: object) -> RegBenchTask:
    return RegBenchTask(RegBenchConfig(**{**SMALL, **overrides}), seed=5)


def automaton(table: torch.Tensor) -> DFA:
    """The automata-lib DFA a transition table (states, 18) describes; padding rows are dropped."""
    rows = [row for row in table.tolist() if any(t >= 0 for t in row)] or [table[0].tolist()]
    n = max(len(rows), 1 + max((t for row in rows for t in row), default=0))
    transitions = {s: {a: t for a, t in enumerate(table[s].tolist()) if t >= 0} for s in range(n)}
    return DFA(
        states=set(range(n)),
        input_symbols=set(range(LETTERS)),
        transitions=transitions,
        initial_state=0,
        final_states=set(range(n)),
        allow_partial=True,
    )


def strings(tokens: torch.Tensor) -> list[list[int]]:
    """The complete strings of one prompt (the last one may be cut by seq_len, so it is left out)."""
    body = [t for t in tokens.tolist() if t != PAD]
    parts, current = [], []
    for t in body:
        if t == SEP:
            parts.append(current)
            current = []
        else:
            current.append(t)
    return parts


@pytest.mark.parametrize("prompts", ["fixed", "resample"])
def test_every_string_is_accepted_by_its_dfa(prompts: str) -> None:
    t = task(prompts=prompts)
    tables = t.tables["train"][:20]
    if prompts == "fixed":
        tokens, states = t.fixed["train"][0][:20], t.fixed["train"][1][:20]
    else:
        tokens, states = sample_prompts(tables, t.config, torch.Generator().manual_seed(0))
    assert tokens.shape == states.shape == (20, 256)
    for prompt, table in zip(tokens, tables, strict=True):
        dfa = automaton(table)
        parts = strings(prompt)
        assert 9 <= len(parts) <= 18 or prompt[-1] != PAD, "U{10..19} strings unless cut by seq_len"
        for s in parts:
            assert 1 <= len(s) <= 49
            assert dfa.accepts_input(s)


def test_validity_meta_is_the_dfa_transition_function() -> None:
    t = task()
    which = torch.arange(6)
    tokens, states = t.fixed["val"][0][which], t.fixed["val"][1][which]
    batch = RegBenchTask.batch(tokens, states, t.tables["val"][which])
    for b in range(6):
        dfa = automaton(t.tables["val"][b])
        state = dfa.initial_state
        for pos, token in enumerate(tokens[b].tolist()):
            if token == PAD:
                break
            state = dfa.initial_state if token == SEP else dfa.transitions[state][token]
            allowed = {a for a in range(LETTERS) if a in dfa.transitions[state]}
            assert set(torch.nonzero(batch.meta["valid"][b, pos]).flatten().tolist()) == allowed
            if pos + 1 < len(tokens[b]) and batch.targets[b, pos] < LETTERS:
                assert batch.loss_mask[b, pos]
                assert batch.targets[b, pos].item() in allowed
            else:
                assert not batch.loss_mask[b, pos], "separator and padding targets carry no loss"


def test_dfas_are_minimal_trimmed_distinct_and_splits_disjoint() -> None:
    config = RegBenchConfig(**SMALL)
    dfas = generate_dfas(config, seed=2)
    assert len(dfas) == len(set(dfas)) == 90
    for table in dfas:
        dfa = automaton(torch.tensor(table))
        assert len(dfa.minify().states) == len(table), "already minimal"
        reachable = {0}
        frontier = [0]
        while frontier:
            for target in dfa.transitions[frontier.pop()].values():
                if target not in reachable:
                    reachable.add(target)
                    frontier.append(target)
        assert reachable == set(range(len(table))), "every state reachable from the start"
        assert all(sum(t >= 0 for t in row) <= 3 for row in table), "out-degree at most 3"
    t = task()
    seen = {split: {tuple(map(tuple, x.tolist())) for x in t.tables[split]} for split in t.tables}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"])
    assert not (seen["val"] & seen["test"])


def test_world_is_cached_by_config_and_seed(tmp_path: Path) -> None:
    first = task()
    files = list((tmp_path / "cache" / "regbench").iterdir())
    assert len(files) == 1
    again = task()
    assert torch.equal(first.tables["train"], again.tables["train"])
    assert torch.equal(first.fixed["test"][0], again.fixed["test"][0])
    task(max_states=8)
    assert len(list((tmp_path / "cache" / "regbench").iterdir())) == 2


def test_impossible_settings_are_config_errors() -> None:
    with pytest.raises(ValueError, match="min_states"):
        RegBenchConfig(min_states=9, max_states=5)
    with pytest.raises(ConfigError, match="distinct DFAs"):
        generate_dfas(RegBenchConfig(min_states=2, max_states=2, max_alphabet=1, min_alphabet=1), seed=0)


def metric_context(t: RegBenchTask, logits: torch.Tensor, batch) -> EvalContext:
    return EvalContext(model=None, task=t, batch=batch, logits=logits, cache={})  # type: ignore[arg-type]


def test_tvd_of_the_dfa_distribution_is_zero_and_of_uniform_is_closed_form() -> None:
    t = task()
    batch = t.eval_splits()["test"](32, torch.Generator().manual_seed(3))
    valid = batch.meta["valid"].float()
    exact = torch.where(valid > 0, 0.0, -1e9)  # uniform over the allowed letters
    ctx = metric_context(t, exact, batch)
    assert tvd(ctx)["tvd"].item() == pytest.approx(0.0, abs=1e-6)
    assert validity_accuracy(ctx)["validity_accuracy"].item() == 1.0
    uniform = metric_context(t, torch.zeros_like(valid), batch)
    allowed = valid.sum(-1)[batch.loss_mask]
    # uniform over the 20 tokens vs uniform over k letters: 0.5 (k (1/k - 1/20) + (20 - k)/20) = 1 - k/20
    assert tvd(uniform)["tvd"].item() == pytest.approx((1 - allowed / 20).mean().item(), abs=1e-6)
    wrong = metric_context(t, torch.where(valid > 0, -1e9, 0.0), batch)
    assert validity_accuracy(wrong)["validity_accuracy"].item() == 0.0
    assert tvd(wrong)["tvd"].item() == pytest.approx(1.0, abs=1e-6)


def test_processes_building_the_same_world_at_once_share_one_cache_file(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        tables = pool.map(_build_world, [str(tmp_path / "cache")] * 4)
    assert all(t == tables[0] for t in tables)
    files = list((tmp_path / "cache" / "regbench").iterdir())
    assert [f.suffix for f in files] == [".safetensors"], "one finished file, no temporaries left"


def _build_world(cache: str) -> list:
    os.environ["ICL_LAB_CACHE"] = cache
    return RegBenchTask(RegBenchConfig(**SMALL), seed=11).tables["train"].tolist()


def test_evaluation_prompts_are_distinct_dfas_until_every_one_is_used() -> None:
    world = task()
    n = len(world.tables["test"])
    batch = world.eval_splits()["test"](n, torch.Generator().manual_seed(0))
    assert len({tuple(row) for row in batch.inputs.tolist()}) == n, "each fixed prompt once"
    twice = world.eval_splits()["test"](2 * n, torch.Generator().manual_seed(0))
    assert len({tuple(row) for row in twice.inputs.tolist()}) == n
