"""The repeated-random-token generator: its repeat structure holds for any parameters."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icl_lab.tasks.induction import InductionConfig, InductionTask


@st.composite
def configs(draw: st.DrawFn) -> InductionConfig:
    seq_len = draw(st.integers(4, 80))
    n_copies = draw(st.one_of(st.none(), st.integers(2, 5)))
    copies = n_copies or 2
    if seq_len // copies < 1:
        n_copies, copies = None, 2
    longest = draw(st.integers(1, seq_len // copies))
    return InductionConfig(
        vocab_size=draw(st.integers(2, 100)),
        seq_len=seq_len,
        min_prefix=draw(st.integers(1, longest)),
        max_prefix=longest,
        n_copies=n_copies,
        background_share=draw(st.sampled_from([0.0, 0.3, 1.0])),
    )


@settings(max_examples=60, deadline=None)
@given(config=configs(), seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40))
def test_repeat_structure_holds_for_random_parameters(config: InductionConfig, seed: int, n: int) -> None:
    batch = InductionTask(config, seed).sample(n, torch.Generator().manual_seed(seed))
    tokens, period, end = batch.inputs, batch.meta["period"], batch.meta["repeat_end"]
    T = config.seq_len
    assert tokens.shape == (n, T) and tokens.dtype == torch.long
    assert ((tokens >= 0) & (tokens < config.vocab_size)).all()
    assert torch.equal(batch.targets[:, :-1], tokens[:, 1:])
    assert batch.loss_mask[:, :-1].all() and not batch.loss_mask[:, -1].any()
    for b in range(n):
        ell, stop = int(period[b]), int(end[b])
        if ell == 0:
            assert stop == 0
            continue
        assert config.min_prefix <= ell <= config.longest
        assert stop == (T if config.n_copies is None else config.n_copies * ell)
        assert stop <= T
        t = torch.arange(ell, stop)
        assert torch.equal(tokens[b, t], tokens[b, t - ell]), "each copy repeats the segment"
    if config.background_share == 0:
        assert (period > 0).all()
    if config.background_share == 1:
        assert (period == 0).all()


def test_background_share_and_period_distribution() -> None:
    config = InductionConfig(vocab_size=50, seq_len=40, min_prefix=3, max_prefix=12, background_share=0.25)
    batch = InductionTask(config, 0).sample(20000, torch.Generator().manual_seed(0))
    period = batch.meta["period"]
    share = (period == 0).float().mean().item()
    assert abs(share - 0.25) < 4 * (0.25 * 0.75 / 20000) ** 0.5
    counts = torch.bincount(period[period > 0], minlength=13)[3:].float()
    expected = counts.sum() / 10
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 27.9, "period not uniform on {3..12} (chi-square, 9 dof, p = 0.001)"
    tokens = batch.inputs[period == 0]
    freq = torch.bincount(tokens.flatten(), minlength=50).float()
    assert (freq / freq.mean() - 1).abs().max() < 0.1, "background tokens are uniform"


def test_samples_are_reproducible_from_the_generator() -> None:
    task = InductionTask(InductionConfig(), 0)
    a = task.sample(8, torch.Generator().manual_seed(5))
    b = task.sample(8, torch.Generator().manual_seed(5))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.meta["period"], b.meta["period"])


def test_repeated_split_exists_only_with_background() -> None:
    assert InductionTask.split_names(InductionConfig()) == ["train"]
    with_background = InductionConfig(background_share=0.5)
    assert InductionTask.split_names(with_background) == ["train", "repeated"]
    batch = InductionTask(with_background, 0).eval_splits()["repeated"](64, torch.Generator())
    assert (batch.meta["period"] > 0).all()
