"""The RegBench architectures: recurrences against step-by-step references, every architecture's
shape, causality and capacity to overfit, the n-gram layer and the n-gram head score."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from icl_lab.experiment import ExperimentConfig, build_model, validate_config
from icl_lab.metrics.base import EvalContext
from icl_lab.metrics.ngram_heads import ngram_heads
from icl_lab.models import native_mamba, recurrence
from icl_lab.models.base import ModelIO
from icl_lab.models.mixers import LinearAttention, Mamba
from icl_lab.models.ngram_layer import NgramLayer, ngram_targets
from icl_lab.models.recurrence import (
    linear_recurrence,
    selective_scan,
    sequential_recurrence,
)
from icl_lab.tasks.base import Batch
from icl_lab.training import compiled
from icl_lab.training.compiled import compiled_kernels

TASK = {"name": "regbench", "n_train_dfas": 20, "n_val_dfas": 5, "n_test_dfas": 5, "seq_len": 24}
MIXERS = ["lstm", "gru", "linear_attention", "retention", "gla", "mamba", "s4d"]
MODELS = {
    "transformer": {"name": "transformer", "n_layers": 2, "n_heads": 2, "d_model": 32},
    "transformer_tied": {  # GPT-2's init, tied unembedding: Akyurek et al.'s transformer
        "name": "transformer",
        "n_layers": 2,
        "n_heads": 2,
        "d_model": 32,
        "init": "gpt2",
        "tie_unembed": True,
    },
    "transformer_rope": {
        "name": "transformer",
        "n_layers": 2,
        "n_heads": 2,
        "d_model": 32,
        "positional": "rope",
    },
    **{
        m: {"name": "mixer_lm", "mixer": m, "n_layers": 2, "d_model": 32, "n_heads": 2, "chunk": 8}
        for m in MIXERS
    },
    "linear_attention_unnormalised": {  # the linear transformer of Akyurek et al.'s code
        "name": "mixer_lm",
        "mixer": "linear_attention",
        "feature_map": "none",
        "positional": "learned",
        "init": "gpt2",
        "tie_unembed": True,
        "n_layers": 2,
        "d_model": 32,
        "n_heads": 2,
        "chunk": 8,
    },
    "retention_retnet": {  # RetNet's retention, as Akyurek et al.'s code runs it
        "name": "mixer_lm",
        "mixer": "retention",
        "retnet": True,
        "n_layers": 2,
        "d_model": 32,
        "n_heads": 2,
        "chunk": 8,
    },
    "gla_yang": {  # Yang et al.'s GLA, as Akyurek et al.'s code runs it
        "name": "mixer_lm",
        "mixer": "gla",
        "gla_yang": True,
        "n_layers": 2,
        "d_model": 32,
        "n_heads": 2,
        "chunk": 8,
    },
    "s4d_inv": {"name": "mixer_lm", "mixer": "s4d", "s4d_init": "inv", "n_layers": 2, "d_model": 32},
    "linear_attention_dropout": {  # dropout on the scores (in training only)
        "name": "mixer_lm",
        "mixer": "linear_attention",
        "feature_map": "none",
        "attn_dropout": 0.1,
        "act_fn": "gelu_new",
        "n_layers": 2,
        "d_model": 32,
        "n_heads": 2,
        "chunk": 8,
    },
    "mamba_bare": {  # Akyurek et al.'s lm_simple_noffn: the mixer alone, tied N(0, 1) embeddings
        "name": "mixer_lm",
        "mixer": "mamba",
        "layout": "bare",
        "mlp": False,
        "tie_unembed": True,
        "embed_std": 1.0,
        "n_layers": 1,
        "d_model": 32,
    },
    "lstm_keras": {
        "name": "mixer_lm",
        "mixer": "lstm",
        "recurrent_init": "keras",
        "n_layers": 1,
        "d_model": 32,
    },
    "lstm_ngram": {
        "name": "mixer_lm",
        "mixer": "lstm",
        "n_layers": 1,
        "d_model": 32,
        "ngram_layers": [{"after": 0, "n": 1}, {"after": 0, "n": 2}],
    },
    "transformer_ngram": {
        "name": "transformer",
        "n_layers": 1,
        "n_heads": 2,
        "d_model": 32,
        "ngram_layers": [{"after": -1, "n": 2}],
    },
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICL_LAB_CACHE", str(tmp_path / "cache"))


def config_of(name: str, **fields: object) -> ExperimentConfig:
    """A one-step RegBench config of MODELS[name], with model fields overridden."""
    model = {**MODELS[name], **fields}
    return validate_config({"name": name, "task": TASK, "model": model, "training": {"length": {"steps": 1}}})


def model_for(name: str, **fields: object) -> torch.nn.Module:
    return build_model(config_of(name, **fields), "cpu")


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_chunked_linear_recurrence_equals_sequential(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 19, 3, 4, generator=g), torch.randn(2, 19, 3, 4, generator=g)
    v = torch.randn(2, 19, 3, 5, generator=g)
    log_decay = -torch.rand(2, 19, 3, 4, generator=g)
    expected = sequential_recurrence(q, k, v, log_decay)
    assert torch.allclose(linear_recurrence(q, k, v, log_decay, chunk), expected, atol=1e-5)
    assert torch.allclose(
        linear_recurrence(q, k, v, torch.zeros(1, 1, 1, 1), chunk),
        sequential_recurrence(q, k, v, torch.zeros(1, 1, 1, 1)),
        atol=1e-4,
    )


def diagonal_loop(log_decay: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """h_t = exp(log_decay_t) h_{t-1} + b_t, y_t = sum over the last axis of c_t h_t, one step at a
    time: inputs broadcastable to (B, T, ..., K) -> y (B, T, ...)."""
    shape = torch.broadcast_shapes(log_decay.shape, b.shape, c.shape)
    log_decay, b, c = (x.expand(shape) for x in (log_decay, b, c))
    h, ys = torch.zeros(shape[0], *shape[2:]), []
    for t in range(shape[1]):
        h = log_decay[:, t].exp() * h + b[:, t]
        ys.append((c[:, t] * h).sum(-1))
    return torch.stack(ys, 1)


# eager: chunks of 8, 8 and 5 steps; compiled: two of 8 (one shape, one compile); native: 5 channels
# (a part of one vector block) and 37 (two blocks and a part)
@pytest.mark.parametrize(
    ("kernel", "T", "C"), [("eager", 21, 5), ("compiled", 16, 5), ("native", 21, 5), ("native", 9, 37)]
)
def test_selective_scan_equals_the_recurrence_on_whole_tensors(
    kernel: str, T: int, C: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(2)
    inputs = (
        torch.nn.functional.softplus(torch.randn(2, T, C, generator=g)),  # dt
        -torch.rand(C, 3, generator=g) * 4,  # A
        torch.randn(2, T, C, generator=g),  # u
        torch.randn(2, T, 3, generator=g),  # Bs
        torch.randn(2, T, 3, generator=g),  # Cs
    )
    dt, A, u, Bs, Cs = inputs = [x.requires_grad_() for x in inputs]
    whole = diagonal_loop(dt[..., None] * A, (dt * u)[..., None] * Bs[:, :, None, :], Cs[:, :, None, :])
    calls = []
    if kernel == "compiled":  # the compiled chunk step, counted, on inputs below the size it needs
        monkeypatch.setattr(compiled, "KERNEL_ELEMENTS", 0)
        step = recurrence._compiled_selective_chunk()
        monkeypatch.setattr(
            recurrence, "_compiled_selective_chunk", lambda: lambda *a: calls.append(1) or step(*a)
        )
    if kernel == "native":
        assert native_mamba.available()
        scan = native_mamba.selective_scan
        monkeypatch.setattr(native_mamba, "selective_scan", lambda *a: calls.append(1) or scan(*a))
    with compiled_kernels(kernel != "eager"):
        y = selective_scan(dt, A, u, Bs, Cs, native=kernel == "native")
    assert len(calls) == {"eager": 0, "compiled": 2, "native": 1}[kernel]
    torch.testing.assert_close(y, whole, atol=1e-6, rtol=1e-6)
    grads = torch.autograd.grad(y.square().sum(), inputs)
    for grad, expected in zip(grads, torch.autograd.grad(whole.square().sum(), inputs), strict=True):
        torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-5)  # gradients reach about 100


def test_the_native_causal_conv_silu_equals_torchs_conv1d_on_a_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mamba's convolution read from a (B, T, 2C) view, as its in-projection's chunk gives it, with
    C = 37 channels (two vectors and a part); 9 steps and 4 taps."""
    g = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv1d(37, 37, 4, groups=37, padding=3)
    both = torch.randn(2, 9, 74, generator=g, requires_grad=True)
    x = both.chunk(2, -1)[0]
    expected = torch.nn.functional.silu(conv(x.transpose(1, 2))[..., :9].transpose(1, 2))
    calls = []
    op = native_mamba.causal_conv_silu
    monkeypatch.setattr(native_mamba, "causal_conv_silu", lambda *a: calls.append(a[0].stride()) or op(*a))
    mamba = Mamba(18, 4, 2)  # 36 channels: only its forward's choice of path is used here
    with compiled_kernels(True):
        assert native_mamba.allowed(x)
        y = native_mamba.causal_conv_silu(x, conv.weight.squeeze(1), conv.bias)
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-6)
    grads = torch.autograd.grad(y.square().sum(), (both, conv.weight, conv.bias))
    wanted = torch.autograd.grad(expected.square().sum(), (both, conv.weight, conv.bias))
    for grad, want in zip(grads, wanted, strict=True):
        torch.testing.assert_close(grad, want, atol=1e-5, rtol=1e-5)
    with compiled_kernels(True):
        mamba(torch.randn(1, 5, 18))
    assert calls[-1] == (5 * 72, 72, 1), "Mamba passes its in-projection's half without a copy"


def test_the_native_mamba_kernels_are_checked_operators_that_leave_denormals_alone() -> None:
    """torch.library's checks of each operator (schema, fake tensors, autograd registration), and
    the process still keeps denormal floats after loading the kernels: a library linked with
    -ffast-math would have turned on flush-to-zero for everything else."""
    assert native_mamba.available()
    g = torch.Generator().manual_seed(0)
    scan = [torch.rand(2, 6, 18, generator=g), -torch.rand(18, 4, generator=g)] + [
        torch.randn(*shape, generator=g) for shape in ((2, 6, 18), (2, 6, 4), (2, 6, 4))
    ]
    torch.library.opcheck(native_mamba.selective_scan_op, [x.requires_grad_() for x in scan])
    conv = [torch.randn(*shape, generator=g).requires_grad_() for shape in ((2, 6, 18), (18, 4), (18,))]
    torch.library.opcheck(native_mamba.causal_conv_silu_op, conv)
    assert (torch.tensor([1e-39]) * 1).item() > 0


def test_without_a_compiler_mamba_warns_once_and_runs_in_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICL_LAB_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler")
    native_mamba._library.cache_clear()
    try:
        ones = [
            torch.ones(1, 4, 2),
            -torch.ones(2, 1),
            torch.ones(1, 4, 2),
            torch.ones(1, 4, 1),
            torch.ones(1, 4, 1),
        ]
        with (
            pytest.warns(UserWarning, match="native kernels are unavailable") as caught,
            compiled_kernels(True),
        ):
            assert not native_mamba.allowed(ones[0])
            y = selective_scan(*ones)
        assert len(caught) == 1
        h = [1.0]  # h_t = e^-1 h_{t-1} + 1
        for _ in range(3):
            h.append(math.exp(-1) * h[-1] + 1)
        torch.testing.assert_close(y[0, :, 0], torch.tensor(h))
    finally:
        native_mamba._library.cache_clear()


@pytest.mark.parametrize("name", list(MODELS))
def test_architecture_shape_and_causality(name: str) -> None:
    torch.manual_seed(0)
    model = model_for(name)
    tokens = torch.randint(0, 18, (3, 24))
    logits = model(tokens)
    assert logits.shape == (3, 24, 20) and torch.isfinite(logits).all()
    changed = tokens.clone()
    changed[:, 15] = (changed[:, 15] + 1) % 18
    after = model(changed)
    assert torch.allclose(after[:, :15], logits[:, :15], atol=1e-5), "no position sees the future"
    assert not torch.allclose(after[:, 15:], logits[:, 15:], atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_architecture_overfits_a_tiny_batch(name: str) -> None:
    torch.manual_seed(0)
    model = model_for(name)
    tokens = torch.randint(0, 18, (4, 24), generator=torch.Generator().manual_seed(2))
    tokens[:, 0] = torch.arange(4)  # the first token tells the sequences apart
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3, f"{name} memorised 4 sequences only to loss {loss.item():.2f} (ln 20 = 3.0)"


def brute_force_targets(tokens: list[int], n: int) -> set[tuple[int, int]]:
    """The definition: i attends to j + 1 (j < i) when the n tokens ending at j equal those ending at i."""
    return {
        (i, j + 1)
        for i in range(n - 1, len(tokens))
        for j in range(n - 1, i)
        if tokens[j - n + 1 : j + 1] == tokens[i - n + 1 : i + 1]
    }


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ngram_layer_attends_where_the_definition_says(n: int) -> None:
    tokens = torch.randint(0, 3, (4, 30), generator=torch.Generator().manual_seed(n))
    targets = ngram_targets(tokens, n)
    for b in range(4):
        assert set(map(tuple, targets[b].nonzero().tolist())) == brute_force_targets(tokens[b].tolist(), n)
    layer = NgramLayer(n, 6)
    seen = {}
    layer.hook_pattern.fns.append(lambda x, hook: seen.setdefault("pattern", x))
    h = torch.randn(4, 30, 6)
    out = layer(h, tokens)
    pattern = seen["pattern"][:, 0]
    rows = targets.any(-1)
    assert torch.allclose(pattern.sum(-1), rows.float()), "rows with a match sum to 1, others to 0"
    assert torch.allclose(pattern, targets / targets.sum(-1, keepdim=True).clamp(min=1))
    expected = layer.read(pattern @ h) + layer.keep(h)
    assert torch.allclose(out, expected, atol=1e-6)


def test_ngram_head_score_of_a_hand_built_head() -> None:
    tokens = torch.randint(0, 4, (8, 40), generator=torch.Generator().manual_seed(0))
    exact = ngram_targets(tokens, 2).float()
    exact = exact / exact.sum(-1, keepdim=True).clamp(min=1)
    uniform = torch.ones(40, 40).tril().expand(8, 40, 40) / torch.arange(1, 41)[:, None]
    pattern = torch.stack([exact, uniform], 1)  # (B, 2 heads, T, T)
    ctx = EvalContext(
        model=SimpleNamespace(n_layers=2),  # type: ignore[arg-type]
        task=None,  # type: ignore[arg-type]
        batch=Batch(tokens, tokens, torch.ones_like(tokens, dtype=torch.bool), {}),
        logits=torch.zeros(8, 40, 20),
        cache={"blocks.0.attn.hook_pattern": pattern, "blocks.1.attn.hook_pattern": pattern.flip(1)},
    )
    scores = ngram_heads(ctx)
    for score in scores.values():  # layer 1 holds layer 0's heads in reverse order
        assert score.shape == (2, 2) and torch.equal(score[1], score[0].flip(0))
    assert scores["ngram_head_score_2"][0, 0].item() == pytest.approx(1.0, abs=1e-6)
    # 2-gram targets are 1-gram targets, so the 1-gram score is the share of rows with a 1-gram
    # match that also have a 2-gram match
    one, two = ngram_targets(tokens, 1).any(-1), ngram_targets(tokens, 2).any(-1)
    expected = (one & two).sum() / one.sum()
    assert scores["ngram_head_score_1"][0, 0].item() == pytest.approx(expected.item(), abs=1e-6)
    assert scores["ngram_head_score_3"][0, 0].item() < 1.0
    # uniform attention: on average the share of earlier positions that are targets
    targets = ngram_targets(tokens, 1)
    share = (targets.sum(-1) / torch.arange(1, 41))[one].mean()
    assert scores["ngram_head_score_1"][0, 1].item() == pytest.approx(share.item(), abs=1e-5)


def test_unnormalised_linear_attention_is_the_masked_product_of_raw_scores() -> None:
    """y_t = sum over s <= t of (q_t . k_s / sqrt(e)) v_s per head, computed chunked."""
    torch.manual_seed(0)
    attention = LinearAttention("linear_attention", 8, 2, chunk=3, feature_map="none")
    x = torch.randn(2, 7, 8)
    q, k, v = (t.view(2, 7, 2, 4).transpose(1, 2) for t in attention.qkv(x).chunk(3, -1))  # (B, H, T, e)
    scores = (q @ k.transpose(-1, -2) / 2.0).tril()  # (B, H, T, T), 2 = sqrt(e)
    expected = attention.out((scores @ v).transpose(1, 2).reshape(2, 7, 8))
    torch.testing.assert_close(attention(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="feature_map applies to linear_attention only"):
        config_of("gla", feature_map="none")


def test_gpt2_init_tied_unembedding_and_bare_layout() -> None:
    """GPT-2's scheme: linear weights N(0, 0.02), the residual branches' output projections N(0,
    0.02 / sqrt(2 n_layers)); a tied model's logits are the final state times the embedding's
    transpose, with no unembedding of its own; a bare model is the mixer alone."""
    model = model_for("retention", d_model=128, n_layers=8, init="gpt2", tie_unembed=True)
    block = model.blocks[3]
    out_std = 0.02 / 4  # sqrt(2 x 8 layers)
    for weight, std in [
        (block.mixer.qkv.weight, 0.02),
        (block.mixer.gate.weight, 0.02),
        (block.mlp[0].weight, 0.02),
        (block.mixer.out.weight, out_std),
        (block.mlp[2].weight, out_std),
    ]:
        assert weight.mean().abs() < 5 * std / weight.numel() ** 0.5  # 5 standard errors
        assert weight.std().item() == pytest.approx(std, rel=0.05)
    assert block.mlp[0].bias.abs().max() == 0
    assert not hasattr(model, "unembed")
    tokens = torch.randint(0, 20, (2, 9))
    final = {}
    model.ln_final.register_forward_hook(lambda module, args, out: final.setdefault("h", out))
    torch.testing.assert_close(model(tokens), final["h"] @ model.embed.weight.T)
    with pytest.raises(ValueError, match=r"tie_unembed needs as many outputs \(3\) as tokens \(20\)"):
        model.cfg.check_io(ModelIO(n_ctx=9, d_out=3, d_vocab=20))
    transformer = model_for("transformer_tied")
    for weight, std in [
        (transformer.blocks[1].attn.W_Q, 0.02),
        (transformer.blocks[1].mlp.W_in, 0.02),
        (transformer.blocks[1].attn.W_O, 0.01),  # sqrt(2 x 2 layers)
        (transformer.blocks[1].mlp.W_out, 0.01),
    ]:
        assert weight.std().item() == pytest.approx(std, rel=0.1)
    assert transformer.unembed.W_U.data_ptr() == transformer.embed.W_E.data_ptr()
    assert "unembed.W_U" not in dict(transformer.named_parameters())
    bare = model_for("mamba_bare")
    assert not [name for name, _ in bare.named_parameters() if "ln" in name]
    expected = bare.blocks[0].mixer(bare.embed(tokens)) @ bare.embed.weight.T
    torch.testing.assert_close(bare(tokens), expected)

    # S4D's output map keeps 0.02 (Akyurek et al.'s name for it escapes GPT-2's rescaling); the
    # n-gram layers' read maps take 0.02 too; Mamba's conv bias is PyTorch's U(+-1/sqrt(4)) either way
    s4d = model_for("s4d", init="gpt2", d_model=128)
    assert s4d.blocks[1].mixer.out.weight.std().item() == pytest.approx(0.02, rel=0.05)
    hybrid = model_for("lstm_ngram", init="gpt2", d_model=128)
    assert hybrid.ngram[1].read.weight.std().item() == pytest.approx(0.02, rel=0.05)
    wide = model_for("mamba_bare", d_model=512).embed.weight  # (tokens, 512): enough values for 5%
    assert wide.std().item() == pytest.approx(1.0, rel=0.05)
    conv_bias = model_for("mamba", d_model=256).blocks[0].mixer.conv.bias
    assert conv_bias.abs().max() <= 0.5 and conv_bias.std().item() == pytest.approx(0.5 / 3**0.5, rel=0.1)
    default = model_for("retention")  # PyTorch's fan-in uniform: U(+-1/sqrt(32))
    assert default.blocks[0].mixer.qkv.weight.abs().max().item() == pytest.approx(32**-0.5, rel=0.02)


def test_keras_init_of_an_lstm() -> None:
    """Glorot-uniform input weights, orthonormal columns in the recurrent weights, biases 0 but the
    forget gate's 1 (rows 32..63 of bias_ih: PyTorch's gate order i, f, g, o)."""
    lstm = model_for("lstm_keras").blocks[0].mixer.rnn
    assert lstm.weight_ih_l0.abs().max().item() == pytest.approx((6 / (32 + 128)) ** 0.5, rel=0.02)
    torch.testing.assert_close(lstm.weight_hh_l0.T @ lstm.weight_hh_l0, torch.eye(32), atol=1e-5, rtol=0)
    assert lstm.bias_ih_l0[32:64].eq(1).all() and lstm.bias_ih_l0.sum() == 32 and lstm.bias_hh_l0.eq(0).all()
    with pytest.raises(Exception, match="recurrent_init applies to lstm and gru only"):
        config_of("s4d", recurrent_init="keras")


@pytest.mark.parametrize("scale", [0.02, 0.3])  # 0.02: the per-head norm's eps matters
def test_retnet_retention_is_its_parallel_form(scale: float) -> None:
    """RetNet's retention as its parallel form computes it: scores R_n q_n . R_m k_m / sqrt(e) times
    the decay mask gamma^(n - m) (m <= n) whose rows are divided by the root of their sum; each score
    row divided by max(|its sum|, 1); times the values (twice the width); a per-head LayerNorm
    without gain or bias; the swish gate. R_n rotates the pairs (i, i + e/2) by n theta_i, theta_i =
    10000^-(i / (e/2 - 1))."""
    torch.manual_seed(0)
    B, T, d, H, e = 2, 11, 16, 2, 8
    attention = LinearAttention("retention", d, H, chunk=4, retnet=True)
    with torch.no_grad():
        for p in attention.parameters():
            p.normal_(0, scale)
    x = torch.randn(B, T, d)
    q, k, v = attention.qkv(x).split([d, d, 2 * d], -1)
    q, k, v = q.view(B, T, H, e), k.view(B, T, H, e), v.view(B, T, H, 2 * e)
    theta = torch.tensor([10000.0 ** -(i / 3) for i in range(4)])
    c, s = (torch.arange(T)[:, None] * theta).cos(), (torch.arange(T)[:, None] * theta).sin()  # (T, e/2)

    def rotated(z: torch.Tensor) -> torch.Tensor:
        a, b = z[..., :4], z[..., 4:]
        return torch.cat([a * c[:, None] - b * s[:, None], a * s[:, None] + b * c[:, None]], -1)

    gamma = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float))  # (H,)
    n = torch.arange(T)
    mask = gamma[:, None, None] ** (n[:, None] - n[None, :]).clamp(min=0) * (n[:, None] >= n[None, :])
    mask = mask / mask.sum(-1, keepdim=True).sqrt()  # (H, T, T)
    scores = torch.einsum("bnhe,bmhe->bhnm", rotated(q), rotated(k)) / math.sqrt(e) * mask  # (B, H, T, T)
    scores = scores / scores.sum(-1, keepdim=True).abs().clamp(min=1)
    y = torch.einsum("bhnm,bmhf->bnhf", scores, v)  # (B, T, H, 2e)
    y = torch.nn.functional.layer_norm(y, (2 * e,)).reshape(B, T, 2 * d)
    expected = attention.out(y * torch.nn.functional.silu(attention.gate(x)))
    torch.testing.assert_close(attention(x), expected, rtol=1e-4, atol=1e-5)
    assert attention.out.bias is not None and attention.gate.weight.shape == (2 * d, d)
    for field, mixer, message in [
        ("mixer_bias", "s4d", "mixer_bias applies to linear_attention, retention and gla only"),
        ("retnet", "gla", "retnet applies to retention only"),
    ]:
        with pytest.raises(Exception, match=message):
            config_of(mixer, **{field: True})


def test_s4d_convolution_equals_its_recurrence() -> None:
    torch.manual_seed(0)
    layer = model_for("s4d").blocks[0].mixer
    with torch.no_grad():
        layer.log_dt.uniform_(-3, -1)
        layer.C.normal_()
    x = torch.randn(2, 50, 32)
    dtA = layer.log_dt.exp()[:, None] * -layer.A_log.exp()
    gain = torch.expm1(dtA) / -layer.A_log.exp()
    y = diagonal_loop(dtA, gain * x[..., None], layer.C)
    expected = layer.out(torch.nn.functional.gelu(y + layer.D * x))
    assert torch.allclose(layer(x), expected, atol=1e-4)


def test_gla_yang_is_its_recurrence() -> None:
    """Yang et al.'s GLA: queries and keys of width d/2 (e = d / 2H per head), keys scaled by
    1 / sqrt(d / H), decays logsigmoid(x W1 W2 + b) / 16 per key channel, the recurrence over the
    values, a per-head LayerNorm without gain or bias, the swish gate (with a bias), out."""
    torch.manual_seed(0)
    B, T, d, H = 2, 13, 16, 2
    attention = model_for("gla_yang", d_model=d, n_heads=H).blocks[0].mixer
    with torch.no_grad():
        for p in attention.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(B, T, d)
    q, k, v = attention.qkv(x).split([8, 8, 16], -1)
    q, k, v = q.view(B, T, H, 4), k.view(B, T, H, 4) / math.sqrt(d / H), v.view(B, T, H, 8)
    log_decay = torch.nn.functional.logsigmoid(attention.decay(x)).view(B, T, H, 4) / 16
    y = sequential_recurrence(q, k, v, log_decay)  # (B, T, H, 8)
    y = torch.nn.functional.layer_norm(y, (8,)).reshape(B, T, d)
    expected = attention.out(y * torch.nn.functional.silu(attention.gate(x)))
    torch.testing.assert_close(attention(x), expected, rtol=1e-4, atol=1e-5)
    assert attention.gate.bias is not None and attention.qkv.bias is None and attention.out.bias is None
    assert attention.decay[1].bias is not None and not hasattr(attention, "norm")
    with torch.no_grad():  # gates far enough below 0 that their log-decays, -4 a step, are clamped at -3
        attention.decay[1].bias.fill_(-64.0)
    log_decay = torch.nn.functional.logsigmoid(attention.decay(x)).view(B, T, H, 4) / 16
    assert log_decay.max() < -3.5
    y = sequential_recurrence(q, k, v, log_decay.clamp(min=-3))
    y = torch.nn.functional.layer_norm(y, (8,)).reshape(B, T, d)
    expected = attention.out(y * torch.nn.functional.silu(attention.gate(x)))
    torch.testing.assert_close(attention(x), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(Exception, match="gla_yang applies to gla only"):
        config_of("retention", gla_yang=True)
    with pytest.raises(Exception, match=r"gla_yang splits half of d_model \(12\) into n_heads \(4\) keys"):
        config_of("gla_yang", d_model=12, n_heads=4)


def test_linear_attention_drops_its_scores_in_training_only() -> None:
    """In training, y_t = sum over s <= t of dropout(q_t . k_s / sqrt(e)) v_s, the masks drawn from
    the global generator as F.dropout draws them; in eval the scores are all kept."""
    torch.manual_seed(0)
    model = model_for("linear_attention_dropout")
    attention = model.blocks[0].mixer
    x = torch.randn(2, 11, 32)
    q, k, v = (t.view(2, 11, 2, 16).transpose(1, 2) for t in attention.qkv(x).chunk(3, -1))  # (B, H, T, e)
    scores = (q @ k.transpose(-1, -2) / 4.0).tril()  # (B, H, T, T), 4 = sqrt(e)
    kept = attention.out((scores @ v).transpose(1, 2).reshape(2, 11, 32))
    torch.testing.assert_close(attention(x), kept, rtol=1e-5, atol=1e-5)
    model.train()
    torch.manual_seed(7)
    dropped = attention(x)
    torch.manual_seed(7)
    masked = torch.nn.functional.dropout(scores, 0.1)
    torch.testing.assert_close(dropped, attention.out((masked @ v).transpose(1, 2).reshape(2, 11, 32)))
    assert not torch.allclose(dropped, kept, atol=1e-3)
    assert model.blocks[0].mlp[1].approximate == "tanh"
    with pytest.raises(
        Exception, match="attn_dropout applies to linear_attention with feature_map none only"
    ):
        config_of("linear_attention", attn_dropout=0.1)


def test_s4d_inv_is_its_complex_recurrence_and_starts_where_its_code_does() -> None:
    """S4D-Inv: h_t = exp(dt A) h_{t-1} + (exp(dt A) - 1) / A x_t over d_state / 2 complex modes,
    y_t = 2 Re(C h_t) + D x_t, then GELU and the output map; at init Re(A) = -(1/2 + 1e-4), Im(A_n) =
    (N / pi) (N / (2n + 1) - 1) shared by every channel, D ~ N(0, 1), step sizes in [0.001, 0.1]."""
    torch.manual_seed(0)
    layer = model_for("s4d_inv", d_model=512).blocks[0].mixer
    N = 16
    assert layer.A_log.shape == layer.A_imag.shape == (1, N // 2) and layer.C.shape == (512, N // 2, 2)
    torch.testing.assert_close(-layer.A_log.exp(), torch.full((1, 8), -0.5001))
    n = torch.arange(8)
    torch.testing.assert_close(layer.A_imag[0], N / math.pi * (N / (2 * n + 1.0) - 1))
    assert layer.D.std().item() == pytest.approx(1.0, rel=0.1) and layer.D.mean().abs() < 5 / 512**0.5
    # C = C0 B with C0 unit complex normal and B scaled so that 2 sum_n |B_n / w_n|^2 = 1 (w_n with
    # real part -1/2): over 512 channels, 2 sum_n mean |C_n|^2 / |w_n|^2 is that sum
    w2 = 0.25 + layer.A_imag[0] ** 2
    assert (2 * (layer.C.square().sum(-1).mean(0) / w2).sum()).item() == pytest.approx(1.0, rel=0.1)
    assert math.log(1e-3) <= layer.log_dt.min() and layer.log_dt.max() <= math.log(1e-1)
    layer = model_for("s4d_inv").blocks[0].mixer
    with torch.no_grad():
        layer.log_dt.uniform_(-3, -1)
    x = torch.randn(2, 40, 32)
    A = torch.complex(-layer.A_log.exp(), layer.A_imag).to(torch.complex128)  # (1, N/2)
    dtA = layer.log_dt.exp().double()[:, None] * A  # (d, N/2)
    C = torch.complex(layer.C[..., 0], layer.C[..., 1]).to(torch.complex128)
    y = 2 * diagonal_loop(dtA, (dtA.exp() - 1) / A * x.double()[..., None], C).real
    expected = layer.out(torch.nn.functional.gelu(y.float() + layer.D * x))
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="s4d_init applies to s4d only"):
        config_of("mamba", s4d_init="inv")
    with pytest.raises(Exception, match=r"d_state \(15\) must be even"):
        config_of("s4d_inv", d_state=15)
