"""Long- vs short-prefix induction: the probe's sequences and its reading of a known head."""

import pytest
import torch

from icl_lab.analysis.prefix_induction import prefix_probe, prefix_sequences


def test_prefix_sequences_copy_a_stretch_of_distinct_tokens() -> None:
    pool = torch.arange(100, 300, 2)  # 100 even ids
    tokens, dest, source, corrupted = prefix_sequences(5, 32, pool, 4, torch.Generator().manual_seed(0))
    assert (tokens[:, 0] == 100).all() and dest == 31 and source == 8 + 4
    assert torch.isin(tokens, pool).all() and torch.isin(corrupted, pool).all()
    assert torch.equal(tokens[:, 28:], tokens[:, 8:12]), "the last 4 tokens copy positions 8-11"
    for row in tokens:
        assert len(set(row[:28].tolist())) == 28, "distinct before the copy"
    assert (tokens[:, dest] == tokens[:, source - 1]).all()
    changed = (corrupted != tokens).nonzero()[:, 1]
    assert changed.tolist() == [source - 2] * 5, "only the token two before the source"
    assert not (corrupted[:, source - 2, None] == tokens).any(), "replaced by a token not in the sequence"
    with pytest.raises(ValueError, match="pool of at least 33 tokens"):
        prefix_sequences(1, 32, torch.arange(32), 2, torch.Generator())


def test_a_head_matching_one_token_is_short_prefix() -> None:
    from test_metrics import T, V, hand_built_induction_model

    probe = prefix_probe(hand_built_induction_model(), torch.arange(V), T, range(1, 6), n=50)
    assert probe.clean.shape == (5, 2, 2)
    assert (probe.clean[:, 1, 0] > 0.9).all(), "the induction head attends to the source at every length"
    torch.testing.assert_close(probe.corrupted[:, 1, 0], probe.clean[:, 1, 0], atol=0.02, rtol=0)
    assert (probe.clean[:, 0, 0] < 0.05).all(), "the previous-token head looks elsewhere"
