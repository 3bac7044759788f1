"""The Transformer: TransformerLens hook names and layouts, causality, variants, fused attention."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from icl_lab.models import ModelIO, transformer
from icl_lab.models.folded_attention import attend
from icl_lab.models.hooks import HookPoint, takes_suffix
from icl_lab.models.transformer import Transformer, TransformerConfig, rotate, sinusoidal

B, T, V = 3, 10, 12

# Hook names of a TransformerLens HookedTransformer (without LayerNorm-internal hooks).
TL_BLOCK_HOOKS = {
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
}


def make(io: ModelIO | None = None, **fields: object) -> Transformer:
    cfg = TransformerConfig(**{"n_layers": 2, "n_heads": 3, "d_model": 12, **fields})
    model = Transformer(cfg, io or ModelIO(n_ctx=T, d_out=V, d_vocab=V))
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model


def test_hook_names_and_layouts_match_transformer_lens() -> None:
    model = make(d_mlp=20)
    tokens = torch.randint(V, (B, T))
    _, cache = model.run_with_cache(tokens)
    H, e, d = 3, 4, 12
    expected = {
        "hook_embed": (B, T, d),
        "hook_pos_embed": (B, T, d),
        "hook_logits": (B, T, V),
    }
    for layer in range(2):
        p = f"blocks.{layer}."
        expected |= {
            p + "hook_resid_pre": (B, T, d),
            p + "attn.hook_q": (B, T, H, e),
            p + "attn.hook_k": (B, T, H, e),
            p + "attn.hook_v": (B, T, H, e),
            p + "attn.hook_attn_scores": (B, H, T, T),
            p + "attn.hook_pattern": (B, H, T, T),
            p + "attn.hook_z": (B, T, H, e),
            p + "hook_attn_out": (B, T, d),
            p + "hook_resid_mid": (B, T, d),
            p + "mlp.hook_pre": (B, T, 20),
            p + "mlp.hook_post": (B, T, 20),
            p + "hook_mlp_out": (B, T, d),
            p + "hook_resid_post": (B, T, d),
        }
    assert {k: tuple(v.shape) for k, v in cache.items()} == expected
    for name in cache:
        if name.startswith("blocks."):
            assert name.split(".", 2)[2] in TL_BLOCK_HOOKS
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert torch.allclose(pattern.sum(-1), torch.ones(B, H, T))
    assert (pattern.triu(1) == 0).all(), "attention must be causal"


def test_parameter_names_and_shapes_follow_transformer_lens() -> None:
    shapes = {k: tuple(v.shape) for k, v in make(attn_only=True).named_parameters()}
    assert shapes["embed.W_E"] == (V, 12)
    assert shapes["pos_embed.W_pos"] == (T, 12)
    assert shapes["blocks.1.attn.W_Q"] == (3, 12, 4)
    assert shapes["blocks.1.attn.W_O"] == (3, 4, 12)
    assert shapes["blocks.1.attn.b_Q"] == (3, 4)
    assert shapes["blocks.0.ln1.w"] == (12,)
    assert shapes["unembed.W_U"] == (12, V)
    assert not any(".mlp." in k for k in shapes)


def test_z_to_attn_out_is_the_sum_of_head_outputs() -> None:
    model = make(attn_only=True)
    _, cache = model.run_with_cache(torch.randint(V, (B, T)))
    attn = model.blocks[0].attn
    z = cache["blocks.0.attn.hook_z"]
    per_head = torch.einsum("bthe,hed->bthd", z, attn.W_O)
    assert torch.allclose(per_head.sum(2) + attn.b_O, cache["blocks.0.hook_attn_out"], atol=1e-6)


VARIANTS = list(
    itertools.product(["none", "pre", "post"], ["learned", "sinusoidal", "rope", "none"], [True, False])
)


@pytest.mark.parametrize(("norm", "positional", "attn_only"), VARIANTS)
def test_every_variant_is_causal(norm: str, positional: str, attn_only: bool) -> None:
    model = make(norm=norm, positional=positional, attn_only=attn_only, d_head=4)
    tokens = torch.randint(V, (B, T))
    changed = tokens.clone()
    changed[:, 6:] = (tokens[:, 6:] + 1) % V
    a, b = model(tokens), model(changed)
    assert a.shape == (B, T, V) and torch.isfinite(a).all()
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5), "a future token changed a past output"
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_vector_input_and_readout_mlp() -> None:
    io = ModelIO(n_ctx=T, d_out=5, d_input=7, target_positions=(-1,))
    model = make(io, readout={"positions": [-1], "hidden": [16, 16]}, norm="none", attn_scale=False)
    out = model(torch.randn(B, T, 7))
    assert out.shape == (B, 1, 5)
    assert [tuple(layer.weight.shape) for layer in model.readout] == [(16, 12), (16, 16)]
    # He initialisation of the readout MLP: std sqrt(2 / fan_in)
    big = make(
        ModelIO(n_ctx=T, d_out=5, d_input=7, target_positions=(-1,)),
        d_model=400,
        n_heads=4,
        readout={"hidden": [400]},
    )
    assert big.readout[0].weight.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.05)


def test_the_reddy_papers_network_initialises_as_the_authors_code() -> None:
    """configs/reddy_paper.yaml: attention N(0, 1/D) with D = 63 content dims, three ReLU layers of
    128 He-initialised with one scalar bias each N(0, 1/128), logits N(0, 1/128) without a bias
    (SPEC section 1; the author's init_network_params, in two public copies)."""
    from icl_lab.experiment import build_model, load_config

    model = build_model(load_config("reddy_paper"), "cpu")
    for name, p in model.named_parameters():
        if ".attn.W_" in name:
            assert p.std().item() == pytest.approx(1 / math.sqrt(63), rel=0.03), name
    assert [tuple(layer.weight.shape) for layer in model.readout] == [(128, 128)] * 3
    assert all(
        layer.weight.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.03) for layer in model.readout
    )
    assert [tuple(layer.bias.shape) for layer in model.readout] == [(1,)] * 3
    assert model.unembed.W_U.std().item() == pytest.approx(1 / math.sqrt(128), rel=0.05)
    assert model.unembed.b_U is None
    biases = []
    for seed in range(300):
        model.reset_parameters(torch.Generator().manual_seed(seed))
        biases += [layer.bias.item() for layer in model.readout]
    assert torch.tensor(biases).std().item() == pytest.approx(1 / math.sqrt(128), rel=0.1)
    assert abs(torch.tensor(biases).mean().item()) < 3 / math.sqrt(128 * 900)


def test_the_reddy_papers_network_computes_and_steps_as_the_authors_update() -> None:
    """Logits equal the author's forward written out here (x <- x + softmax_causal(x Wq (x Wk)^T) x Wv
    twice, three ReLU layers adding a scalar bias, unbiased logits at the query), and one step of
    the config's optimiser is the author's update p <- (1 - 1e-6) p - 0.01 grad."""
    from icl_lab.experiment import build_model, load_config
    from icl_lab.training.optim import build_optimizer

    cfg = load_config("reddy_paper")
    model = build_model(cfg, "cpu").double()
    x = torch.randn(4, 9, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    h = x
    for block in model.blocks:
        (wq,), (wk,), (wv,) = block.attn.W_Q, block.attn.W_K, block.attn.W_V
        scores = ((h @ wq) @ (h @ wk).transpose(1, 2)).masked_fill(~causal, -math.inf)  # (B, query, key)
        h = h + torch.softmax(scores, -1) @ (h @ wv)
    h = h[:, -1]
    for layer in model.readout:
        h = torch.relu(h @ layer.weight.T + layer.bias)
    logits = model(x)[:, -1]
    torch.testing.assert_close(logits, h @ model.unembed.W_U, rtol=1e-10, atol=1e-10)

    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    F.cross_entropy(logits, torch.tensor([0, 5, 9, 31])).backward()
    build_optimizer(params, cfg.training.optimizer).step()
    for p, p0 in zip(params, before, strict=True):
        torch.testing.assert_close(p.detach(), (1 - 1e-6) * p0 - 0.01 * p.grad, rtol=0, atol=1e-15)


def test_readout_biases_default_to_the_bias_flag_and_keep_old_hashes() -> None:
    """hidden_bias unset follows `bias` (a bias per unit or none), and leaves the hash of every
    config from before it (reddy_fast's, computed before the field existed)."""
    from icl_lab.experiment import load_config

    io = ModelIO(n_ctx=T, d_out=5, d_input=7, target_positions=(-1,))
    for bias, shapes in ((True, [(6,)]), (False, [])):
        model = make(io, readout={"hidden": [6], "bias": bias})
        assert [tuple(p.shape) for n, p in model.named_parameters() if n.startswith("readout.")][1:] == shapes
        assert (model.unembed.b_U is not None) == bias
    assert load_config("reddy_fast").hash() == "ef55b190114a9b71"
    assert load_config("reddy_fast", ["model.readout.hidden_bias=unit"]).hash() != "ef55b190114a9b71"


@pytest.mark.parametrize("path", ["fused", "explicit", "tiny"])
@pytest.mark.parametrize("positions", [[-1], [2, 5, -1]])
def test_readout_model_computes_its_last_block_at_the_readout_positions_only(
    path: str, positions: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unhooked, a readout model's last block computes only the positions from the first readout
    position on (Transformer.last_block_first); logits and gradients must be those of every position's pass,
    which any hook on the last block restores, for each attention path (the explicit one forced by
    a hook on the pattern that reads the suffix, as a clamp's does)."""
    io = ModelIO(n_ctx=T, d_out=5, d_vocab=V, target_positions=tuple(positions))
    model = make(io, positional="rope", d_head=2, d_mlp=8, readout={"positions": positions, "hidden": [6]})
    if path == "tiny":  # T * d_head * T = 200 and 128 x 3 heads: tiny, unless the thresholds say not
        assert transformer.tiny_heads(128 * 3, T, 2)
    else:
        monkeypatch.setattr(transformer, "SMALL_EAGER", 0)
    tokens = torch.randint(V, (128, T), generator=torch.Generator().manual_seed(2))
    firsts: list[int] = []
    attention = type(model.blocks[-1].attn).forward
    monkeypatch.setattr(
        model.blocks[-1].attn,
        "forward",
        lambda x, first=0: firsts.append(first) or attention(model.blocks[-1].attn, x, first),
    )

    def run(hooks: list) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        weights = torch.linspace(-1, 1, logits.numel()).view(logits.shape)
        return logits, torch.autograd.grad((logits * weights).sum(), list(model.parameters()))

    reads_pattern = ("blocks.1.attn.hook_pattern", takes_suffix(lambda x, hook: None))
    pattern = [reads_pattern] if path == "explicit" else []
    logits, grads = run(pattern)
    reference, reference_grads = run([*pattern, ("blocks.1.hook_resid_post", lambda x, hook: None)])
    assert firsts == [min(p % T for p in positions), 0]
    assert logits.shape == (128, len(positions), 5)
    assert torch.allclose(logits, reference, atol=1e-5)
    for grad, reference_grad in zip(grads, reference_grads, strict=True):
        assert torch.allclose(grad, reference_grad, atol=1e-5 * float(reference_grad.abs().max()))


def test_fused_attention_equals_explicit_pattern_path() -> None:
    for scale in (True, False):
        model = make(positional="rope", attn_scale=scale, d_head=4)
        tokens = torch.randint(V, (B, T))
        fused = model(tokens)
        explicit, _ = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
        assert torch.allclose(fused, explicit, atol=1e-5)


def hooked_run(model: Transformer, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits with layer 0's scores and layer 1's pattern cached and head 1's scaled by a half."""
    cache: dict[str, torch.Tensor] = {}

    def edit(x: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        cache[hook.name] = x.clone()
        return x * torch.tensor([1.0, 0.5, 1.0])[:, None, None]  # head 1 scaled

    hooks = [("blocks.0.attn.hook_attn_scores", edit), ("blocks.1.attn.hook_pattern", edit)]
    return model.run_with_hooks(tokens, fwd_hooks=hooks), cache


@pytest.mark.parametrize("compiled", [False, True])
def test_tiny_attention_equals_matmuls_and_its_hooks_see_batch_head_query_key(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny heads run in a (T, T, head, batch) layout (Attention.tiny_attention), eager when there
    are many and compiled always; the logits, their gradients, a cached pattern and a hook's edit
    of the scores and pattern must be those of the batched matmuls."""
    model = make(positional="rope", d_head=2)  # T * d_head * T = 200: tiny
    tokens = torch.randint(V, (128, T), generator=torch.Generator().manual_seed(1))  # 128 x 3 heads

    def run(model: Transformer) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
        logits, cache = (torch.compile(hooked_run) if compiled else hooked_run)(model, tokens)
        weights = torch.linspace(-1, 1, logits.numel()).view(logits.shape)  # a gradient of no symmetry
        return logits, cache, torch.autograd.grad((logits * weights).sum(), list(model.parameters()))

    monkeypatch.setattr(transformer, "SMALL_EAGER", 0)
    monkeypatch.setattr(transformer, "SMALL_MATMUL", 0)
    reference, reference_cache, reference_grads = run(model)
    monkeypatch.undo()
    logits, cache, grads = run(model)
    assert torch.allclose(logits, reference, atol=1e-5)
    for name, value in reference_cache.items():
        assert cache[name].shape == (128, 3, T, T) and torch.allclose(cache[name], value, atol=1e-5), name
    assert cache["blocks.1.attn.hook_pattern"].sum(-1).allclose(torch.ones(128, 3, T))
    for grad, reference_grad in zip(grads, reference_grads, strict=True):
        assert torch.allclose(grad, reference_grad, atol=1e-4 * float(reference_grad.abs().max()))


def test_unscaled_attention_scores_are_raw_dot_products() -> None:
    model = make(attn_scale=False)
    _, cache = model.run_with_cache(torch.randint(V, (B, T)))
    q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
    scores = cache["blocks.0.attn.hook_attn_scores"]
    raw = torch.einsum("bqhe,bkhe->bhqk", q, k)
    mask = torch.ones(T, T).tril().bool()
    assert torch.allclose(scores[..., mask], raw[..., mask], atol=1e-6)
    assert torch.isinf(scores[..., ~mask]).all()


def test_rope_scores_depend_only_on_relative_position() -> None:
    e, n = 6, 20
    freq = 10000.0 ** (-torch.arange(0, e, 2).float() / e)
    angle = torch.arange(n).float()[:, None] * torch.cat([freq, freq])[None]
    cos, sin = angle.cos(), angle.sin()
    q, k = torch.randn(e), torch.randn(e)

    def score(i: int, j: int) -> float:
        return float(rotate(q, cos[i], sin[i]) @ rotate(k, cos[j], sin[j]))

    assert score(7, 3) == pytest.approx(score(15, 11), abs=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)
    assert float(rotate(q, cos[5], sin[5]).norm()) == pytest.approx(float(q.norm()), rel=1e-5)


def test_sinusoidal_codes_follow_the_formula() -> None:
    codes = sinusoidal(50, 8)
    assert codes[7, 2].item() == pytest.approx(math.sin(7 / 10000 ** (2 / 8)), abs=1e-6)
    assert codes[7, 3].item() == pytest.approx(math.cos(7 / 10000 ** (2 / 8)), abs=1e-6)


def test_config_rejects_heads_that_do_not_divide_width() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        TransformerConfig(d_model=10, n_heads=3)
    assert TransformerConfig(d_model=10, n_heads=3, d_head=4).head_dim == 4


def test_run_with_hooks_replaces_and_detaches() -> None:
    model = make()
    tokens = torch.randint(V, (B, T))
    zeroed = model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: torch.zeros_like(x))]
    )
    final_ln_of_zero = model.unembed.b_U.expand(B, T, V)
    assert torch.allclose(zeroed, final_ln_of_zero)
    assert all(not h.fns for h in model.hook_dict.values()), "hooks must be removed after the call"
    with pytest.raises(KeyError):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.9.hook_nope", lambda x, h: x)])
    assert all(not h.fns for h in model.hook_dict.values())


@pytest.mark.filterwarnings("error:There is a performance drop")  # vmap looping over the kernel
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("positions", [None, [2, 5, -1]])
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))],
)
def test_vmapped_members_share_one_fused_attention_call(
    compiled: bool, positions: list[int] | None, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under vmap, an ensemble's attention is one fused-kernel call for every member
    (folded_attention.attend). Each member's logits and gradients (torch.func.grad over vmap, as
    the compiled step takes them) must be those it has alone, with the mask of a readout model's
    last block too."""
    monkeypatch.setattr(transformer, "SMALL_EAGER", 0)  # no tiny heads: the fused kernel's path
    monkeypatch.setattr(transformer, "SMALL_MATMUL", 0)
    io = ModelIO(n_ctx=T, d_out=5, d_vocab=V, target_positions=tuple(positions or range(T)))
    model = make(io, positional="rope", readout={"positions": positions} if positions else {})
    members = []
    for seed in range(3):
        model.reset_parameters(torch.Generator().manual_seed(seed))
        members.append({n: p.detach().to(device, copy=True) for n, p in model.named_parameters()})
    model.to(device)
    stacked = {n: torch.stack([m[n] for m in members]) for n in members[0]}
    tokens = torch.randint(V, (3, B, T), generator=torch.Generator().manual_seed(3)).to(device)  # one each
    weights = torch.linspace(-1, 1, B * len(positions or range(T)) * 5, device=device).view(B, -1, 5)

    def loss(params: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        return (torch.func.functional_call(model, params, (tokens,)) * weights).sum()

    calls = []
    monkeypatch.setattr(transformer, "attend", lambda *a, **k: calls.append(1) or attend(*a, **k))
    model.batched(True)
    gradients = torch.func.grad(lambda p, t: torch.func.vmap(loss)(p, t).sum())
    together = (torch.compile(gradients) if compiled else gradients)(stacked, tokens)
    calls.clear()
    losses = torch.func.vmap(loss)(stacked, tokens)
    assert len(calls) == 2  # one call per layer for all three members
    model.batched(False)
    for m, params in enumerate(members):
        alone = torch.func.grad_and_value(loss)(params, tokens[m])
        assert torch.allclose(losses[m], alone[1], atol=1e-5)
        for name, grad in alone[0].items():
            assert torch.allclose(together[name][m], grad, atol=1e-5 * float(grad.abs().max())), name


def test_folded_attention_batches_any_argument() -> None:
    """attend under vmap, with keys shared by every member and a mask of each member's own, equals
    the kernel called member by member, gradients included."""
    M, H, P, e = 4, 2, 3, 5
    g = torch.Generator().manual_seed(0)
    q, v = (torch.randn(M, B, H, P if x == "q" else T, e, generator=g, requires_grad=True) for x in "qv")
    k = torch.randn(B, H, T, e, generator=g, requires_grad=True)
    mask = torch.rand(M, P, T, generator=g) < 0.7
    mask[..., 0] = True  # every query sees a key
    folded = torch.func.vmap(attend, in_dims=(0, None, 0, 0, None, None))(q, k, v, mask, False, 0.5)
    looped = torch.stack(
        [F.scaled_dot_product_attention(q[m], k, v[m], attn_mask=mask[m], scale=0.5) for m in range(M)]
    )
    assert torch.allclose(folded, looped, atol=1e-6)
    weights = torch.randn(folded.shape, generator=g)
    for a, b in zip(
        torch.autograd.grad((folded * weights).sum(), (q, k, v)),
        torch.autograd.grad((looped * weights).sum(), (q, k, v)),
        strict=True,
    ):
        assert torch.allclose(a, b, atol=1e-5)
