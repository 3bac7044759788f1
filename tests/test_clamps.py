"""Clamps as data: ablations do exactly what they claim, gate per member, and keep gradients flowing."""

import pytest
import torch
from torch.func import functional_call

from icl_lab.interventions import CLAMPS
from icl_lab.interventions.base import clamped_forward
from icl_lab.models import ModelIO
from icl_lab.models.transformer import Transformer, TransformerConfig
from icl_lab.training.trainer import over_members

B, T, V = 4, 12, 10


def model() -> Transformer:
    m = Transformer(
        TransformerConfig(n_layers=2, n_heads=3, d_model=12, attn_only=True),
        ModelIO(n_ctx=T, d_out=V, d_vocab=V),
    )
    m.reset_parameters(torch.Generator().manual_seed(1))
    return m


def clamp(**fields: object):
    return CLAMPS.get(fields.get("kind", "ablate")).model_validate({"kind": "ablate", **fields})


def run(m: Transformer, clamps: list, tokens: torch.Tensor, on: torch.Tensor | None = None) -> tuple:
    """Logits and cache of a clamped forward pass."""
    cache: dict[str, torch.Tensor] = {}
    flags = torch.ones(len(clamps), dtype=torch.bool) if on is None else on
    save = (lambda n: True, lambda x, hook: cache.__setitem__(hook.name, x))
    logits = clamped_forward(
        lambda inputs, hooks: m.run_with_hooks(inputs, fwd_hooks=hooks), m, clamps, flags, {}, tokens, [save]
    )
    return logits, cache


def loss_with(m: Transformer, clamps: list, tokens: torch.Tensor) -> torch.Tensor:
    logits, _ = run(m, clamps, tokens)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.roll(-1, 1).flatten())


def test_zero_ablating_a_head_gives_exactly_zero_gradient_to_its_W_O_and_W_V() -> None:
    m, tokens = model(), torch.randint(V, (B, T))
    loss_with(m, [clamp(heads=["1.2"])], tokens).backward()
    attn = m.blocks[1].attn
    assert (attn.W_O.grad[2] == 0).all()
    assert (attn.W_V.grad[2] == 0).all()
    assert (attn.W_O.grad[:2] != 0).any(), "other heads still learn"
    assert (m.blocks[0].attn.W_Q.grad != 0).any(), "gradients flow through the clamped graph"


def test_zero_ablated_head_output_is_zero_at_chosen_positions_only() -> None:
    m, tokens = model(), torch.randint(V, (B, T))
    _, cache = run(m, [clamp(heads=["0.1"], positions=[2, -1])], tokens)
    z = cache["blocks.0.attn.hook_z"]  # (B, T, H, e)
    assert (z[:, [2, T - 1], 1] == 0).all()
    assert (z[:, :2, 1] != 0).any() and (z[:, :, 0] != 0).any()


def test_mean_and_constant_ablation() -> None:
    m, tokens = model(), torch.randint(V, (B, T))
    _, clean = m.run_with_cache(tokens)
    for spec, expect in [
        ({"mode": "mean"}, clean["blocks.1.attn.hook_v"][:, :, 0].mean(0, keepdim=True)),
        ({"mode": "constant", "value": 0.5}, torch.tensor(0.5)),
    ]:
        _, cache = run(m, [clamp(heads=["1.0"], activation="v", **spec)], tokens)
        v = cache["blocks.1.attn.hook_v"]
        assert torch.allclose(v[:, :, 0], expect.expand_as(v[:, :, 0]))
        assert torch.equal(v[:, :, 1:], clean["blocks.1.attn.hook_v"][:, :, 1:])


def test_layer_wildcard_and_pattern_ablation() -> None:
    m, tokens = model(), torch.randint(V, (B, T))
    _, cache = run(m, [clamp(heads=["0.*"], activation="pattern")], tokens)
    assert (cache["blocks.0.attn.hook_z"] == 0).all()


def test_clamp_is_gated_by_the_member_flag() -> None:
    m, tokens = model(), torch.randint(V, (B, T))
    gated, _ = run(m, [clamp(heads=["1.2"])], tokens, on=torch.tensor([False]))
    assert torch.equal(gated, run(m, [], tokens)[0])


@pytest.mark.filterwarnings("error:There is a performance drop")
def test_vmapped_members_with_different_clamps_equal_separate_runs() -> None:
    m, tokens = model(), torch.randint(V, (2, B, T))
    params = {k: torch.stack([p.detach(), p.detach() * 1.1]) for k, p in m.named_parameters()}
    clamps = [clamp(heads=["1.2"]), clamp(heads=["0.0"], activation="v", mode="mean")]
    on = torch.tensor([[True, False], [False, True]])  # member 0: first clamp; member 1: second

    def member(params: dict, tokens: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
        def forward(inputs: torch.Tensor, hooks: list) -> torch.Tensor:
            with m.hooks(hooks):
                return functional_call(m, params, (inputs,))

        return clamped_forward(forward, m, clamps, on, {}, tokens)

    m.batched(True)  # as the trainer of an ensemble does
    together = over_members(member, 2)(params, tokens, on)
    m.batched(False)
    for i in range(2):
        alone = member({k: v[i] for k, v in params.items()}, tokens[i], on[i])
        assert torch.allclose(together[i], alone, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"heads": ["2.0"]}, "does not exist"),
        ({"heads": ["0.3"]}, "does not exist"),
        ({"heads": ["x"]}, "form 'layer.head'"),
        ({"heads": ["0.0"], "activation": "rot_q"}, "no hook point"),
        ({"heads": ["0.0"], "positions": [T]}, "outside a context"),
    ],
)
def test_clamp_naming_what_the_model_lacks_is_rejected(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clamp(**fields).check(model())
