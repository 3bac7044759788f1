"""Bursty few-shot classification: generator statistics, eval splits, progress measures."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from icl_lab.metrics import EvalContext
from icl_lab.metrics.fewshot import (
    context_label_accuracy,
    fewshot_attention,
    in_context_accuracy,
    in_context_probability,
)
from icl_lab.tasks.bursty import BurstyConfig, BurstyTask


def task(**fields: object) -> BurstyTask:
    return BurstyTask(BurstyConfig(**fields), seed=0)


@st.composite
def configs(draw: st.DrawFn) -> BurstyConfig:
    L = draw(st.sampled_from([2, 4, 8]))
    N = draw(st.sampled_from([2, 4, 6, 8]))
    B = draw(st.sampled_from([b for b in (0, 1, 2, 3, 4) if b == 0 or (N % b == 0 and b < N)]))
    if B == 0 and N % 2:
        B = 1
    return BurstyConfig(
        n_classes=L * draw(st.integers(1, 16)),
        n_labels=L,
        dim=draw(st.integers(2, 20)),
        n_context=N,
        burstiness=B,
        p_bursty=draw(st.sampled_from([0.0, 0.5, 1.0])),
        p_novel=draw(st.sampled_from([0.0, 0.5, 1.0])),
        zipf_alpha=draw(st.floats(0, 2)),
        noise=draw(st.floats(0, 2)),
        n_novel_classes=L * draw(st.integers(1, 8)),
        n_pos_slots=draw(st.sampled_from([0, 2 * N + 1, 2 * N + 9])),
        no_repeat_labels=draw(st.booleans()) and N // (B or N // 2) <= L,
    )


@settings(max_examples=40, deadline=None)
@given(config=configs(), seed=st.integers(0, 2**20), n=st.integers(1, 30))
def test_sequences_are_built_as_specified(config: BurstyConfig, seed: int, n: int) -> None:
    t = BurstyTask(config, seed)
    batch = t.sample(n, torch.Generator().manual_seed(seed))
    N, D, K, L = config.n_context, config.dim, config.n_classes, config.n_labels
    meta = batch.meta
    assert batch.inputs.shape == (n, 2 * N + 1, config.n_pos_slots + D)
    content = batch.inputs[..., config.n_pos_slots :]
    classes, labels = meta["item_classes"], meta["context_labels"]
    # label tokens are exactly the label vectors of their class's label (class k has label k mod L)
    assert torch.equal(content[:, 1 : 2 * N : 2], t.label_vectors[labels])
    assert torch.equal(labels, classes % L) and torch.equal(batch.targets[:, 0], meta["query_class"] % L)
    assert ((classes >= K) == meta["novel"][:, None]).all(), "novel classes are numbered from K"
    for b in range(n):
        if meta["bursty"][b]:
            counts = torch.bincount(classes[b])
            assert (counts[counts > 0] % config.bursts == 0).all(), "each class appears B times"
            assert meta["query_class"][b] in classes[b], "the query class is in a bursty context"
            if config.no_repeat_labels:
                distinct = classes[b].unique()
                assert (distinct % L).unique().numel() == distinct.numel()
    if config.burstiness == 0:
        assert torch.equal(meta["bursty"], meta["novel"]), "B = 0: only novel contexts are bursty"
    if config.n_pos_slots:
        position = batch.inputs[..., : config.n_pos_slots]
        assert torch.equal(position.sum(-1), torch.ones(n, 2 * N + 1))
        slots = position.argmax(-1)
        assert torch.equal(slots - slots[:, :1], torch.arange(2 * N + 1).expand(n, -1)), "a contiguous block"


def test_zipf_exponent_and_novel_share() -> None:
    t = task(n_classes=512, burstiness=0, zipf_alpha=1.2, p_novel=0.3, n_pos_slots=0)
    batch = t.sample(40000, torch.Generator().manual_seed(1))
    seen = batch.meta["item_classes"][~batch.meta["novel"]].flatten()
    counts = torch.bincount(seen, minlength=512)[:64].double().numpy()
    slope = np.polyfit(np.log(np.arange(1, 65)), np.log(counts), 1)[0]
    assert slope == pytest.approx(-1.2, abs=0.05)
    share = batch.meta["novel"].double().mean().item()
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 40000)


def test_items_scatter_around_their_class_means() -> None:
    t = task(noise=0.5, burstiness=0, p_novel=0.0, n_pos_slots=0)
    batch = t.sample(5000, torch.Generator().manual_seed(2))
    items = batch.inputs[:, 0:16:2]
    means = t.class_means[batch.meta["item_classes"]]
    residual = items * math.sqrt(1 + 0.25) - means  # = 0.5 * eta, eta ~ N(0, I/D)
    assert residual.var().item() == pytest.approx(0.25 / 63, rel=0.05)
    assert items.pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=0.05)


def test_eval_splits_contain_what_they_claim() -> None:
    t = task(n_classes=256, burstiness=2, p_novel=0.0)
    splits = {
        name: sampler(3000, torch.Generator().manual_seed(3)) for name, sampler in t.eval_splits().items()
    }
    ic, ic2, iw = splits["ic"].meta, splits["ic2"].meta, splits["iw"].meta
    assert ic["novel"].all() and (ic["item_classes"] >= 256).all(), "IC: classes never seen in training"
    assert (ic["query_class"][:, None] == ic["item_classes"]).any(1).all()
    assert not ic2["novel"].any()
    assert torch.equal(ic2["context_labels"], (ic2["item_classes"] + 1) % 32), "IC2: labels shifted"
    assert torch.equal(splits["ic2"].targets[:, 0], (ic2["query_class"] + 1) % 32)
    present = (iw["query_class"][:, None] == iw["item_classes"]).any(1).double().mean().item()
    assert present == pytest.approx(1 - (1 - 1 / 256) ** 8, abs=0.01), "IW: query class usually absent"
    assert not iw["bursty"].any()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n_classes": 100, "n_labels": 32}, "must divide n_classes"),
        ({"n_context": 8, "burstiness": 3}, "must divide n_context"),
        ({"n_context": 8, "burstiness": 8}, "and be smaller"),
        ({"n_context": 8, "n_pos_slots": 10}, r"at least 2N\+1"),
        (
            {
                "n_labels": 2,
                "n_classes": 64,
                "n_novel_classes": 64,
                "burstiness": 1,
                "no_repeat_labels": True,
            },
            "N/B",
        ),
    ],
)
def test_impossible_combinations_are_config_errors(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        BurstyConfig(**fields)


def attention_context(t: BurstyTask, pattern_fn: object, n: int = 200) -> EvalContext:
    batch = t.eval_splits()["ic"](n, torch.Generator().manual_seed(4))
    T = batch.inputs.shape[1]
    patterns = [pattern_fn(batch, layer, T) for layer in range(2)]
    ctx = EvalContext(
        None, t, batch, None, {f"blocks.{i}.attn.hook_pattern": p for i, p in enumerate(patterns)}
    )
    ctx.model = type("Model", (), {"n_layers": 2})()
    return ctx


def perfect(batch: object, layer: int, T: int) -> torch.Tensor:
    """Layer 0: label tokens attend to their item; layer 1: the query attends to matching labels."""
    n = (T - 1) // 2
    pattern = torch.eye(T).repeat(len(batch.inputs), 1, 1)
    if layer == 0:
        for j in range(n):
            pattern[:, 2 * j + 1, 2 * j + 1] = 0.0
            pattern[:, 2 * j + 1, 2 * j] = 1.0
    else:
        match = (batch.meta["item_classes"] == batch.meta["query_class"][:, None]).float()
        pattern[:, -1] = 0.0
        pattern[:, -1, 1 : 2 * n : 2] = match / match.sum(1, keepdim=True)
    return pattern[:, None]


def uniform(batch: object, layer: int, T: int) -> torch.Tensor:
    causal = torch.ones(T, T).tril()
    return (causal / causal.sum(1, keepdim=True)).expand(len(batch.inputs), 1, T, T)


def test_progress_measures_of_a_perfect_induction_head_are_one() -> None:
    t = task(n_classes=256, burstiness=2, no_repeat_labels=True)
    values = fewshot_attention(attention_context(t, perfect))
    assert values["item_label_association"][0, 0] == pytest.approx(1.0)
    assert values["target_label_attention"][1, 0] == pytest.approx(1.0)
    assert values["target_item_label_attention"][1, 0] == pytest.approx(1.0)
    assert values["induction_strength"][1, 0] == pytest.approx(1.0)


def test_progress_measures_of_uniform_attention_are_chance() -> None:
    t = task(n_classes=256, burstiness=2, no_repeat_labels=True)
    values = fewshot_attention(attention_context(t, uniform))
    T, B, N = 17, 2, 8
    assert values["target_label_attention"][1, 0] == pytest.approx(B / T, abs=1e-5)
    assert values["target_item_label_attention"][1, 0] == pytest.approx(2 * B / T, abs=1e-5)
    assert values["induction_strength"][1, 0] == pytest.approx((B - (N - B)) / T, abs=1e-5)
    ila = np.mean([1 / (2 * j + 2) for j in range(N)])
    assert values["item_label_association"][0, 0] == pytest.approx(ila, abs=1e-5)


def test_in_context_accuracy_and_probability_read_the_context_labels_only() -> None:
    """The global arg-max is a label absent from the context; among the context's labels the target
    scores highest: in-context accuracy 1 where plain accuracy would be 0."""
    t = task(n_classes=256, burstiness=2)
    batch = t.eval_splits()["ic"](100, torch.Generator().manual_seed(5))
    target = batch.targets[:, -1]
    context = batch.meta["context_labels"]
    assert all(int(y) in row for y, row in zip(target, context.tolist(), strict=True))
    outside = [next(k for k in range(32) if k not in row) for row in context.tolist()]
    logits = torch.zeros(100, 1, 32)
    logits[torch.arange(100), 0, outside] = 10.0
    logits[torch.arange(100), 0, target] = 5.0
    ctx = EvalContext(None, t, batch, logits, {})
    assert (logits[:, -1].argmax(-1) == target).float().mean() == 0.0
    assert in_context_accuracy(ctx)["in_context_accuracy"] == 1.0
    logits[torch.arange(100), 0, target] = -5.0  # now another context label wins among them
    assert in_context_accuracy(EvalContext(None, t, batch, logits, {}))["in_context_accuracy"] == 0.0
    probability = in_context_probability(EvalContext(None, t, batch, logits, {}))["in_context_probability"]
    expected = np.mean(
        [
            sum(math.exp(logits[i, 0, k]) for k in set(row)) / sum(math.exp(v) for v in logits[i, 0].tolist())
            for i, row in enumerate(context.tolist())
        ]
    )
    assert float(probability) == pytest.approx(expected, rel=1e-5)


def test_context_label_accuracy() -> None:
    t = task(n_classes=256, burstiness=2)
    batch = t.eval_splits()["ic"](100, torch.Generator().manual_seed(5))
    logits = torch.full((100, 1, 32), -10.0)
    logits[torch.arange(100), 0, batch.meta["context_labels"][:, 3]] = 10.0
    ctx = EvalContext(None, t, batch, logits, {})
    assert context_label_accuracy(ctx)["context_label_accuracy"] == 1.0
    outside = [next(k for k in range(32) if k not in row) for row in batch.meta["context_labels"].tolist()]
    logits = torch.zeros(100, 1, 32)
    logits[torch.arange(100), 0, outside] = 1.0
    assert context_label_accuracy(EvalContext(None, t, batch, logits, {}))["context_label_accuracy"] == 0.0
