"""Each clamp kind does exactly what it claims, on a small Singh-style model."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_FEWSHOT, TINY_READOUT_MODEL, tiny_config
from icl_lab.errors import ConfigError
from icl_lab.experiment import build_model, build_task, validate_config
from icl_lab.interventions import CLAMPS
from icl_lab.interventions.base import clamped_forward
from icl_lab.tasks.fewshot_layout import correct_labels
from icl_lab.training.trainer import train

FEWSHOT, MODEL = TINY_FEWSHOT, TINY_READOUT_MODEL


def setup(**fields: object) -> tuple:
    config = tiny_config(
        task={**FEWSHOT, **fields.pop("task", {})}, model={**MODEL, **fields.pop("model", {})}, **fields
    )
    task = build_task(config)
    model = build_model(config, task=task)
    model.reset_parameters(torch.Generator().manual_seed(0))
    batch = task.sample(64, torch.Generator().manual_seed(1))
    return config, task, model, batch


def clamp(**fields: object):
    return CLAMPS.get(fields["kind"]).model_validate(fields)


def run(model: torch.nn.Module, batch: object, *clamps: object) -> tuple[torch.Tensor, dict]:
    cache: dict[str, torch.Tensor] = {}
    save = (lambda name: True, lambda x, hook: cache.__setitem__(hook.name, x))
    on = torch.ones(len(clamps), dtype=torch.bool)
    forward = lambda inputs, hooks: model.run_with_hooks(inputs, fwd_hooks=hooks)  # noqa: E731
    return clamped_forward(forward, model, list(clamps), on, batch.meta, batch.inputs, [save]), cache


def test_previous_token_pattern_is_exact() -> None:
    _, _, model, batch = setup()
    _, cache = run(model, batch, clamp(kind="previous_token", heads=["0.1"]))
    pattern = cache["blocks.0.attn.hook_pattern"]
    ideal = F.one_hot(torch.tensor([0, 0, 1, 2, 3]), 5).float()
    assert torch.equal(pattern[:, 1], ideal.expand(64, 5, 5))
    assert not torch.equal(pattern[:, 0], ideal.expand(64, 5, 5))


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_induction_match_puts_the_stated_mass_on_the_matching_label(strength: float) -> None:
    _, _, model, batch = setup()
    _, cache = run(model, batch, clamp(kind="induction_match", heads=["1.2"], strength=strength))
    row = cache["blocks.1.attn.hook_pattern"][:, 2, -1]  # (B, T): the query's row
    correct = correct_labels(batch.meta)
    on_labels = row[:, [1, 3]]
    assert torch.allclose(on_labels[correct], torch.full((64,), strength))
    assert torch.allclose(on_labels[~correct], torch.full((64,), 1 - strength))
    assert torch.equal(row[:, [0, 2, 4]], torch.zeros(64, 3))
    assert not torch.equal(cache["blocks.1.attn.hook_pattern"][:, 1, -1], row), "other heads untouched"


def test_copy_reads_logits_from_the_heads_scores() -> None:
    _, _, model, batch = setup()
    logits, cache = run(model, batch, clamp(kind="copy", head="1.3"))
    scores = cache["blocks.1.attn.hook_attn_scores"][:, 3, -1, [1, 3]]  # (B, 2)
    labels = batch.meta["context_labels"]
    query_logits = logits[:, -1]
    assert torch.allclose(query_logits.gather(1, labels), scores)
    absent = torch.ones_like(query_logits, dtype=torch.bool).scatter_(1, labels, False)
    assert (query_logits[absent] == -1e4).all()


def test_copy_trains_the_heads_queries_and_keys() -> None:
    _, _, model, batch = setup()
    logits, _ = run(model, batch, clamp(kind="copy", head="1.3"))
    F.cross_entropy(logits[:, -1], batch.targets[:, 0]).backward()
    attn = model.blocks[1].attn
    assert attn.W_Q.grad[3].abs().sum() > 0 and attn.W_K.grad[3].abs().sum() > 0
    assert attn.W_Q.grad[0].abs().sum() == 0, "only the copying head feeds the logits"
    assert model.unembed.W_U.grad.abs().sum() == 0


def test_layer_one_clamp_silences_layer_zero_and_shifts_keys() -> None:
    _, _, model, batch = setup()
    _, cache = run(model, batch, clamp(kind="layer1"))
    assert torch.equal(cache["blocks.0.hook_attn_out"], torch.zeros_like(cache["blocks.0.hook_attn_out"]))
    embedded = cache["blocks.0.hook_resid_pre"]
    assert torch.equal(cache["blocks.1.hook_resid_pre"], embedded)
    block = model.blocks[1]
    shifted = torch.cat([torch.zeros_like(embedded[:, :1]), embedded[:, :-1]], 1)
    expected = torch.einsum("btd,hde->bthe", block.ln1(shifted), block.attn.W_K) + block.attn.b_K
    assert torch.allclose(cache["blocks.1.attn.hook_k"], expected, atol=1e-6)


def test_preserve_pattern_keeps_downstream_patterns_and_removes_the_value_path() -> None:
    _, _, model, batch = setup()
    _, clean = run(model, batch)
    preserved = clamp(kind="ablate_preserving", heads=["0.*"], preserve="pattern")
    _, cache = run(model, batch, preserved)
    # equal up to rounding: the reference pass runs layer 0 through the fused attention kernel
    assert torch.allclose(cache["blocks.1.attn.hook_pattern"], clean["blocks.1.attn.hook_pattern"], atol=1e-6)
    assert torch.equal(
        cache["blocks.0.hook_attn_out"], model.blocks[0].attn.b_O.expand_as(cache["blocks.0.hook_attn_out"])
    )
    assert not torch.allclose(cache["blocks.1.attn.hook_v"], clean["blocks.1.attn.hook_v"]), (
        "values see the ablation"
    )
    _, values_kept = run(model, batch, clamp(kind="ablate_preserving", heads=["0.*"], preserve="v"))
    assert torch.allclose(values_kept["blocks.1.attn.hook_v"], clean["blocks.1.attn.hook_v"], atol=1e-6)
    assert not torch.allclose(values_kept["blocks.1.attn.hook_pattern"], clean["blocks.1.attn.hook_pattern"])


def test_preserving_ablation_in_one_doubled_batch_equals_two_passes() -> None:
    """The reference pass rides in the first half of a doubled batch; an explicit reference pass and
    then an ablated pass fed its patterns give the same logits and parameter gradients."""
    _, _, model, batch = setup()
    params = list(model.parameters())

    def loss(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits[:, -1], batch.targets[:, 0])

    logits, cache = run(model, batch, clamp(kind="ablate_preserving", heads=["0.*"], preserve="pattern"))
    assert logits.shape[0] == cache["blocks.1.attn.hook_pattern"].shape[0] == batch.inputs.shape[0]
    reference: dict[str, torch.Tensor] = {}
    record = ("blocks.1.attn.hook_pattern", lambda x, hook: reference.__setitem__("pattern", x))
    model.run_with_hooks(batch.inputs, fwd_hooks=[record])
    expected = model.run_with_hooks(
        batch.inputs,
        fwd_hooks=[
            ("blocks.0.attn.hook_z", lambda z, hook: torch.zeros_like(z)),
            ("blocks.1.attn.hook_pattern", lambda x, hook: reference["pattern"]),
        ],
    )
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=1e-5)
    got = torch.autograd.grad(loss(logits), params)
    for grad, want in zip(got, torch.autograd.grad(loss(expected), params), strict=True):
        torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-4)


def test_graft_reproduces_the_donors_layer_output(tmp_path: Path) -> None:
    config, _, _, batch = setup()
    donor_run = train(config.model_copy(update={"seed": 11}), str(tmp_path), progress=False)
    donor = donor_run.model()
    _, donor_cache = donor.run_with_cache(batch.inputs)
    _, _, model, _ = setup()
    graft = clamp(kind="graft", hook="blocks.0.hook_attn_out", source=str(donor_run.path))
    _, cache = run(model, batch, graft)
    assert torch.allclose(cache["blocks.0.hook_attn_out"], donor_cache["blocks.0.hook_attn_out"])
    _, own = run(model, batch)
    assert not torch.allclose(own["blocks.0.hook_attn_out"], donor_cache["blocks.0.hook_attn_out"])


def test_clamps_are_checked_against_the_model_and_the_task() -> None:
    bad = [
        ({"kind": "copy", "head": "1.*"}, "copy reads one head"),
        ({"kind": "layer1", "layer": 2}, "does not exist"),
        (
            {"kind": "ablate_preserving", "heads": ["1.0"], "preserve": "pattern", "layers": [1]},
            "must come after",
        ),
        (
            {"kind": "ablate_preserving", "heads": ["1.0"], "preserve": "v"},
            "no layer after the ablated heads' layer 1 preserves their v: this would be a plain ablation",
        ),
        ({"kind": "graft", "hook": "blocks.0.hook_nope", "source": "."}, "no hook point"),
        ({"kind": "graft", "hook": "blocks.0.hook_attn_out", "source": "/nowhere"}, "not a run directory"),
    ]
    config, *_ = setup()
    for fields, message in bad:
        with pytest.raises(ConfigError, match=message):
            validate_config({**config.model_dump(by_alias=True), "clamps": [fields]})
    induction = tiny_config().model_dump(by_alias=True)
    with pytest.raises(ConfigError, match="needs a task in the fewshot layout"):
        validate_config({**induction, "clamps": [{"kind": "induction_match", "heads": ["1.0"]}]})


def test_match_clamp_survives_checkpoint_and_resume(tmp_path: Path) -> None:
    from icl_lab.store.run import Run
    from icl_lab.training.trainer import resume
    from test_trainer import assert_identical_runs, killed_copy

    config, *_ = setup(
        clamps=[{"kind": "induction_match", "heads": ["1.0"], "steps": {"from": 2, "until": 9}}],
        training={"length": {"steps": 12}, "optimizer": {"lr": 0.01}},
    )
    full = train(config, str(tmp_path / "a"), progress=False)
    assert Run.open(full.path).config.clamps == config.clamps, "clamps are saved in config.yaml"
    cut = killed_copy(full, tmp_path / "b", last_kept=4)
    assert_identical_runs(full, resume(Run.open(cut), progress=False))


def test_in_context_metrics() -> None:
    from icl_lab.evaluation import evaluate

    _, task, model, batch = setup()
    values = evaluate(model, task, batch, ["in_context_accuracy", "in_context_probability"])
    assert 0 <= values["in_context_accuracy"] <= 1
    with_copy = evaluate(model, task, batch, ["in_context_probability"], [clamp(kind="copy", head="1.0")])
    assert with_copy["in_context_probability"] == pytest.approx(1.0), "copy logits live on the context labels"
    assert math.isfinite(values["in_context_probability"].item())


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "ablate", "heads": ["1.1", "0.2"], "activation": "v", "mode": "mean"},
        {"kind": "previous_token", "heads": ["0.1"]},
        {"kind": "induction_match", "heads": ["1.2"], "strength": 0.7},
        {"kind": "copy", "head": "1.3"},
        {"kind": "layer1"},
        {"kind": "ablate_preserving", "heads": ["0.*"], "preserve": "pattern"},
    ],
    ids=lambda fields: fields["kind"],
)
def test_each_clamp_kind_does_the_same_compiled(fields: dict) -> None:
    """Compiled code never changes what a clamp does: traced by dynamo as one graph (as the compiled
    step needs) and by AOTAutograd, the clamped forward pass and the gradient it gives every
    parameter equal eager ones (grafts run their donor outside the graph anyway). The aot_eager
    backend keeps this quick; inductor's code for clamps is checked through the trainer in
    test_compiled.py."""
    _, _, model, batch = setup()
    the_clamp = clamp(**fields)

    def loss() -> torch.Tensor:
        logits, _ = run(model, batch, the_clamp)
        return F.cross_entropy(logits[:, -1], batch.targets[:, 0])

    results = []
    for fn in (loss, torch.compile(loss, backend="aot_eager", fullgraph=True)):
        model.zero_grad()
        value = fn()
        value.backward()
        results.append((value.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (eager, eager_grads), (compiled, compiled_grads) = results
    assert torch.allclose(compiled, eager, atol=1e-6)
    for name, grad in eager_grads.items():
        assert torch.allclose(compiled_grads[name], grad, atol=1e-6, rtol=1e-4), name
    assert any(g.abs().sum() > 0 for g in eager_grads.values())


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "ablate", "heads": ["1.1"], "activation": "z", "positions": [2, -1]},
        {
            "kind": "ablate",
            "heads": ["1.*"],
            "activation": "pattern",
            "mode": "constant",
            "value": 0.5,
            "positions": [2],
        },
        {"kind": "ablate", "heads": ["1.1", "0.2"], "activation": "rot_q", "mode": "mean"},
        {
            "kind": "ablate",
            "heads": ["1.2"],
            "activation": "q",
            "mode": "constant",
            "value": 0.3,
            "positions": [1, -1],
        },
        {"kind": "previous_token", "heads": ["1.0"], "positions": [3, 4]},
        {"kind": "induction_match", "heads": ["1.2"], "strength": 0.7},
        {"kind": "copy", "head": "1.3"},
        {"kind": "layer1"},
        {"kind": "ablate_preserving", "heads": ["0.*"], "preserve": "pattern"},
    ],
    ids=lambda fields: f"{fields['kind']}-{fields.get('activation', '')}",
)
def test_clamps_on_the_last_block_keep_its_readout_rows_only(
    fields: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With clamps alone on it, a readout model's last block still computes only its readout rows
    (Transformer.last_block_first), and the clamps must do there exactly what they do on every row:
    logits and gradients equal to the full pass, which an unmarked hook on the last block forces.
    Positions count from the sequence's start, so a clamp on a position before the readout row
    changes nothing the logits see."""
    _, _, model, batch = setup()
    firsts: list[int] = []
    last_block_first = model.last_block_first
    monkeypatch.setattr(model, "last_block_first", lambda T: firsts.append(last_block_first(T)) or firsts[-1])
    the_clamp = clamp(**fields)
    on = torch.ones(1, dtype=torch.bool)
    forward = lambda inputs, hooks: model.run_with_hooks(inputs, fwd_hooks=hooks)  # noqa: E731

    def logits_and_grads(extra: list) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        logits = clamped_forward(forward, model, [the_clamp], on, batch.meta, batch.inputs, extra)
        loss = F.cross_entropy(logits[:, -1], batch.targets[:, 0])
        return logits, torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    logits, grads = logits_and_grads([])
    full, full_grads = logits_and_grads([("blocks.1.hook_resid_post", lambda x, hook: None)])
    T = batch.inputs.shape[1]
    assert firsts == [T - 1, 0]
    torch.testing.assert_close(logits, full, atol=1e-6, rtol=1e-5)
    for grad, want in zip(grads, full_grads, strict=True):
        assert (grad is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-4)


def test_induction_pattern_attends_after_the_previous_occurrence() -> None:
    from icl_lab.interventions.induction_pattern import induction_pattern

    tokens = torch.tensor([[5, 1, 2, 5, 1, 3, 2, 5]])
    keys = induction_pattern(tokens)[0, 0].argmax(-1)
    # new tokens attend to themselves; a repeat to the token after its latest earlier occurrence
    assert keys.tolist() == [0, 1, 2, 1, 2, 5, 3, 4]
    config = tiny_config()
    task = build_task(config)
    model = build_model(config, task=task)
    batch = task.sample(8, torch.Generator().manual_seed(0))
    _, cache = run(model, batch, clamp(kind="induction_pattern", heads=["1.1"]))
    assert torch.equal(cache["blocks.1.attn.hook_pattern"][:, 1], induction_pattern(batch.inputs)[:, 0])
    with pytest.raises(ValueError, match="reads token ids"):
        clamp(kind="induction_pattern", heads=["1.1"]).check(setup()[2])
