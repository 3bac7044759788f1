"""Sparse autoencoders: the architectures' defining properties, Kissane's constraints and
resampling, and recovery of known features from synthetic activations."""

import pytest
import torch

from icl_lab.errors import ConfigError
from icl_lab.sae import SAES, build_sae
from icl_lab.sae import sparse_product as sparse_module
from icl_lab.sae.fit import FitSettings, Fitter, fit
from icl_lab.sae.sparse_product import sparse_product


def sae_of(architecture: str, d_in: int = 8, **fields: object):
    return build_sae(SAES.get(architecture).Config(architecture=architecture, **fields), d_in, seed=0)


@pytest.mark.parametrize("architecture", ["relu_l1", "topk", "batchtopk", "jumprelu"])
def test_decoder_rows_stay_unit_norm_and_lose_the_gradients_parallel_part(architecture: str) -> None:
    sae = sae_of(architecture, expansion=4)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    sae(x).loss.backward()
    grad = sae.W_dec.grad.clone()
    sae.constrain_gradients()
    rows = sae.W_dec.detach()
    torch.testing.assert_close((sae.W_dec.grad * rows).sum(1), torch.zeros(32), atol=1e-6, rtol=0)
    along = (grad * rows).sum(1, keepdim=True) * rows  # what was removed: only the parallel part
    torch.testing.assert_close(sae.W_dec.grad + along, grad)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 3.0, 32)[:, None])
    sae.constrain_weights()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))


def test_relu_l1_loss_is_squared_error_summed_over_dims_plus_lambda_l1() -> None:
    sae = sae_of("relu_l1", l1_coefficient=0.5)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(2))
    out = sae(x)
    f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    x_hat = f @ sae.W_dec + sae.b_dec
    assert out.losses["mse"].item() == pytest.approx(((x_hat - x) ** 2).sum(1).mean().item(), rel=1e-6)
    assert out.losses["l1"].item() == pytest.approx(0.5 * f.abs().sum(1).mean().item(), rel=1e-6)


def test_relu_l1_gradients_equal_the_written_out_loss_with_a_decoder_bias() -> None:
    """The encoder takes b_dec's share as one vector product; loss and every gradient must equal
    those of (x - b_dec) W_enc + b_enc written out, with b_dec and b_enc far from zero."""
    sae = sae_of("relu_l1", l1_coefficient=0.5)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(8, generator=g))
        sae.b_enc.copy_(torch.randn(sae.d_sae, generator=g) * 0.5)
    x = torch.randn(64, 8, generator=g) + 1.0
    sae(x).loss.backward()
    ours = {name: p.grad.clone() for name, p in sae.named_parameters()}
    W_enc, W_dec, b_enc, b_dec = (
        p.detach().clone().requires_grad_() for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec)
    )
    f = torch.relu((x - b_dec) @ W_enc + b_enc)
    assert 0 < int((f > 0).sum()) < f.numel(), "some features fire, some do not"
    loss = ((f @ W_dec + b_dec - x) ** 2).sum(1).mean() + 0.5 * f.abs().sum(1).mean()
    loss.backward()
    assert sae(x).loss.item() == pytest.approx(loss.item(), rel=1e-6)
    for name, p in {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}.items():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-5)


def test_sparse_product_equals_the_dense_product_and_its_gradient_on_the_non_zero_features() -> None:
    g = torch.Generator().manual_seed(6)
    features = torch.randn(4, 16, 512, generator=g) * (torch.rand(4, 16, 512, generator=g) < 0.01)
    features.requires_grad_()
    W = torch.randn(512, 8, generator=g, requires_grad=True)
    upstream = torch.randn(4, 16, 8, generator=g)
    sparse = sparse_product(features, W)
    torch.testing.assert_close(sparse, features @ W)
    (grad_f, grad_W) = torch.autograd.grad((sparse * upstream).sum(), (features, W))
    (dense_f, dense_W) = torch.autograd.grad((features @ W * upstream).sum(), (features, W))
    torch.testing.assert_close(grad_W, dense_W)
    nonzero = features != 0
    torch.testing.assert_close(grad_f[nonzero], dense_f[nonzero])
    assert (grad_f[~nonzero] == 0).all() and (dense_f[~nonzero] != 0).all(), "zeros get no gradient"
    assert sparse_product(torch.randn(16, 512, generator=g), W) is None, "dense features: dense product"


@pytest.mark.parametrize("architecture", ["relu_l1", "topk", "batchtopk", "jumprelu"])
def test_training_gradients_are_the_same_with_the_sparse_decoder(architecture: str, monkeypatch) -> None:
    """With a few features firing, the decoder sums the non-zero ones alone; every gradient equals the
    dense product's (JumpReLU, whose threshold learns from zero features, always decodes densely)."""
    fields = {"k": 2} if "topk" in architecture else {}
    if architecture == "jumprelu":  # a kernel wide enough to reach features below the threshold
        fields = {"initial_threshold": 0.05, "bandwidth": 0.05}
    sae = sae_of(architecture, expansion=32, **fields)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(7))
    threshold = fields.get("initial_threshold", 0.0)
    with torch.no_grad():  # each feature's pre-activation passes the threshold on 1% of the inputs
        sae.b_enc.copy_(threshold - sae.pre_activation(x).quantile(0.99, dim=0))
    assert 0 < float((sae.encode(x) != 0).float().mean()) <= sparse_module.MAX_DENSITY

    def gradients() -> dict[str, torch.Tensor]:
        sae.zero_grad()
        sae(x).loss.backward()
        return {name: p.grad.clone() for name, p in sae.named_parameters()}

    sparse = gradients()
    monkeypatch.setattr(sparse_module, "MAX_DENSITY", -1.0)  # every product dense
    for name, dense in gradients().items():
        torch.testing.assert_close(sparse[name], dense, rtol=1e-5, atol=1e-6, msg=name)


def test_topk_keeps_exactly_k_features_and_batchtopk_k_per_input_on_average() -> None:
    topk = sae_of("topk", k=5, expansion=8)
    with torch.no_grad():
        topk.b_enc.fill_(100.0)  # every pre-activation positive: exactly k survive
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(3))
    assert ((topk.encode(x) > 0).sum(1) == 5).all()
    pre = topk.pre_activation(x)
    kept = topk.encode(x)
    assert torch.equal(kept.topk(5).values, pre.topk(5).values), "the five largest, unchanged"
    batch = sae_of("batchtopk", k=5, expansion=8)
    with torch.no_grad():
        batch.b_enc.fill_(100.0)
    features = batch.encode(x)
    assert int((features > 0).sum()) == 5 * 32
    kept = features[features > 0].sort().values
    assert torch.equal(kept, pre.flatten().topk(5 * 32).values.sort().values), "the batch's k N largest"
    assert batch.threshold.item() == pytest.approx(features[features > 0].min().item())
    batch.eval()
    torch.testing.assert_close(batch.encode(x), pre * (pre > batch.threshold))


def test_topk_auxk_loss_and_gradients_equal_the_written_out_definition() -> None:
    """AuxK (Gao et al.): the aux_k largest pre-activations among the dead latents reconstruct the
    residual the live ones miss; written out over every latent with the live ones masked off."""
    sae = sae_of("topk", k=3, aux_k=4, dead_steps=5, expansion=8)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(32, 8, generator=g)
    dead = torch.zeros(sae.d_sae, dtype=torch.bool)
    dead[torch.randperm(sae.d_sae, generator=g)[:10]] = True
    with torch.no_grad():
        sae.steps_since_fired.copy_(torch.where(dead, 100, 0))
        sae.b_enc.copy_(torch.where(dead, 0.0, 3.0))  # the live latents win the top k: the dead stay dead
    sae(x).losses["aux"].backward()
    ours = {name: p.grad.clone() for name, p in sae.named_parameters()}
    W_enc, W_dec, b_enc, b_dec = (
        p.detach().clone().requires_grad_() for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec)
    )
    pre = (x - b_dec) @ W_enc + b_enc
    top = pre.topk(3, dim=1)
    x_hat = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values)) @ W_dec + b_dec
    masked = pre.masked_fill(~dead, float("-inf")).topk(4, dim=1)
    aux_features = torch.zeros_like(pre).scatter(1, masked.indices, torch.relu(masked.values))
    aux = (aux_features @ W_dec - (x - x_hat).detach()).pow(2).sum(1).mean() / 32 * min(10 / 4, 1.0)
    aux.backward()
    assert sae(x).losses["aux"].item() == pytest.approx(aux.item(), rel=1e-5)
    for name, p in {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}.items():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert (ours["W_dec"][~dead] == 0).all() and (ours["W_dec"][dead] != 0).any(), "only dead rows learn"


def test_jumprelu_straight_through_gradients_follow_the_rectangle_kernel() -> None:
    sae = sae_of("jumprelu", d_in=2, expansion=1, bandwidth=0.2, initial_threshold=1.0, l0_coefficient=1.0)
    pre = torch.tensor([[0.95, 2.0], [1.05, 0.5], [1.5, 1.08]])  # within 0.1 of theta = 1: in the kernel
    features = sae.activation(pre)
    torch.testing.assert_close(features, torch.tensor([[0.0, 2.0], [1.05, 0.0], [1.5, 1.08]]))
    features.sum().backward()
    # d/dtheta of sum z H(z - theta) = -theta/eps * #(|z - theta| < eps/2); d theta / d log theta = theta
    expected = torch.tensor([-(1 / 0.2) * 2, -(1 / 0.2) * 1])
    torch.testing.assert_close(sae.log_threshold.grad, expected)


def test_resampling_revives_dead_features_and_resets_their_adam_state() -> None:
    g = torch.Generator().manual_seed(4)
    sae = sae_of("relu_l1", expansion=2)
    x = torch.randn(512, 8, generator=g)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[3, 7, 11]] = True
    with torch.no_grad():
        sae.b_enc[dead] = -1e3  # never fire
    optimizer = torch.optim.Adam(sae.parameters(), betas=(0.0, 0.9999))
    sae(x).loss.backward()
    optimizer.step()
    assert (sae.encode(x)[:, dead] == 0).all()
    live_norm = sae.W_enc[:, ~dead].norm(dim=0).mean()
    assert sae.resample(dead, x, optimizer, g) == 3
    assert (sae.encode(x)[:, dead] > 0).any(0).all(), "every resampled feature fires again"
    torch.testing.assert_close(sae.W_dec[dead].norm(dim=1), torch.ones(3))
    torch.testing.assert_close(sae.W_enc[:, dead].norm(dim=0), torch.full((3,), 0.2 * live_norm.item()))
    assert (sae.b_enc[dead] == 0).all()
    decoder, encoder = optimizer.state[sae.W_dec]["exp_avg_sq"], optimizer.state[sae.W_enc]["exp_avg_sq"]
    assert (decoder[dead] == 0).all() and (decoder[~dead] > 0).any(), "only the resampled rows reset"
    assert (encoder[:, dead] == 0).all() and (optimizer.state[sae.b_enc]["exp_avg"][dead] == 0).all()
    directions = sae.W_dec[dead]
    inputs = x / x.norm(dim=1, keepdim=True)
    assert ((directions @ inputs.T).max(1).values > 0.9999).all(), "each direction is one of the inputs"


def test_relu_l1_recovers_known_feature_directions_from_synthetic_activations() -> None:
    """Activations are sparse non-negative mixtures of 12 random unit directions in 16 dimensions;
    Kissane's recipe recovers each as a decoder row."""
    g = torch.Generator().manual_seed(5)
    truth = torch.randn(12, 16, generator=g)
    truth /= truth.norm(dim=1, keepdim=True)
    active = torch.rand(20_000, 12, generator=g) < 0.08
    x = (active * torch.rand(20_000, 12, generator=g) * 2) @ truth  # (N, 16)
    sae = sae_of("relu_l1", d_in=16, expansion=2, l1_coefficient=0.05, resample_every=400, resample_times=2)
    fitter, history = fit(sae, x, FitSettings(steps=6000, batch_size=256, lr=3e-3, warmup_steps=100), g)
    cosine = truth @ sae.W_dec.detach().T  # (12, 32)
    assert (cosine.max(1).values > 0.95).all(), f"best cosines {cosine.max(1).values}"
    assert history[-1]["l0"] < 3.0, "sparse: about one true feature is active per input"
    assert fitter.resamplings == 2


def test_the_cosine_warm_up_follows_kissanes_scheduler_and_restarts_after_resampling() -> None:
    """train.py's schedule, as an independent reference: a CosineAnnealingLR (T_max = warm-up,
    eta_min = 0.1 x lr) stepped to its minimum before training, stepped each step until lr is back
    at its peak, and stepped to its minimum again after a resampling."""
    lr, warmup, every = 1e-2, 8, 20
    g = torch.Generator().manual_seed(6)
    sae = sae_of("relu_l1", expansion=2, resample_every=every, resample_times=1)
    settings = FitSettings(steps=1, batch_size=16, lr=lr, warmup_steps=warmup, warmup_shape="cosine")
    fitter, x = Fitter(sae, settings, g), torch.randn(64, 8, generator=g)
    ours = []
    for _ in range(2 * every):
        fitter.train_step(x)
        ours.append(fitter.optimizer.param_groups[0]["lr"])
    assert fitter.resamplings == 1
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=warmup, eta_min=0.1 * lr)
    optimizer.step()  # (torch asks for an optimiser step before the scheduler's)
    for _ in range(warmup):
        scheduler.step()
    theirs = []
    for i in range(2 * every):
        theirs.append(optimizer.param_groups[0]["lr"])
        if i < warmup or scheduler.get_last_lr()[0] + 1e-9 < lr:
            scheduler.step()
        if i + 1 == every:
            while scheduler.get_last_lr()[0] > 0.1 * lr + 1e-9:
                scheduler.step()
    assert ours == pytest.approx(theirs, rel=1e-9)
    assert ours[0] == ours[every] == pytest.approx(0.1 * lr)
    assert ours[warmup // 4] == pytest.approx(lr * (0.1 + 0.9 * (1 - 0.5**0.5) / 2))
    linear = Fitter(sae, settings.model_copy(update={"warmup_shape": "linear"}), g)
    linear.step = warmup // 4
    assert linear.learning_rate() == pytest.approx(lr * (0.1 + 0.9 / 4))


def test_unknown_architecture_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown SAE architecture 'relu'"):
        SAES.get("relu")


def _model_and_task():
    from conftest import tiny_config
    from icl_lab.experiment import build_model, build_task

    config = tiny_config(
        model={"name": "transformer", "init_std": 0.5}
    )  # big weights: zeroing hook_z matters
    return build_model(config), build_task(config)


def test_activation_buffer_holds_shuffled_hook_z_of_every_position() -> None:
    from icl_lab.sae.activations import fill_buffer

    model, task = _model_and_task()
    buffer = fill_buffer(
        model, task, layer=1, tokens=300, generator=torch.Generator().manual_seed(0), chunk=8
    )
    assert buffer.activations.shape == (300, 16) and buffer.hook == "blocks.1.attn.hook_z"
    assert buffer.sequences == 24 and buffer.bytes == 300 * 16 * 4, "3 chunks of 8 sequences x 16 tokens"
    batch = task.sample(8, torch.Generator().manual_seed(0))  # the first chunk, recomputed
    _, cache = model.run_with_cache(batch.inputs, names_filter="blocks.1.attn.hook_z")
    first = cache["blocks.1.attn.hook_z"].flatten(2).flatten(0, 1)  # (128, 16)
    found = (first[:, None] == buffer.activations[None]).all(-1).any(1)  # (128,)
    assert found.all(), "the buffer holds the first chunk's activations, in shuffled order"
    assert not torch.equal(buffer.activations[:128], first)
    scaled = fill_buffer(model, task, 1, 300, torch.Generator().manual_seed(0), 8, "expected_norm")
    assert scaled.activations.norm(dim=1).mean().item() == pytest.approx(4.0, rel=1e-5), "sqrt(d_in)"
    torch.testing.assert_close(scaled.activations, buffer.activations * scaled.scale)
    with pytest.raises(ValueError, match=r"no hook blocks\.5\.attn\.hook_z"):
        fill_buffer(model, task, 5, 10, torch.Generator())


def test_ce_recovered_is_one_for_the_identity_and_zero_for_zero() -> None:
    from icl_lab.sae.activations import splice_scores

    model, task = _model_and_task()
    inputs = task.sample(16, torch.Generator().manual_seed(1)).inputs
    identity = splice_scores(model, inputs, 0, lambda x: x)
    assert identity["ce_recovered"] == 1.0 and identity["kl"] == pytest.approx(0.0, abs=1e-6)
    scaled = splice_scores(model, inputs, 0, lambda x: x, scale=2.5)  # in and out of the SAE's scale
    assert scaled["ce_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert identity["ce_zero"] != pytest.approx(identity["ce_clean"], abs=1e-3)
    zero = splice_scores(model, inputs, 0, torch.zeros_like)
    assert zero["ce_recovered"] == pytest.approx(0.0, abs=1e-6) and zero["kl"] > 0


def test_direct_feature_attribution_sums_exactly_to_the_pre_activation_less_its_biases() -> None:
    from icl_lab.sae.attribution import direct_feature_attribution

    model, task = _model_and_task()
    sae = sae_of("relu_l1", d_in=16, expansion=2)
    with torch.no_grad():
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(0))
        sae.b_enc.fill_(0.3)
    inputs = task.sample(4, torch.Generator().manual_seed(2)).inputs
    features = torch.tensor([0, 5, 31])
    scale = 1.7
    dfa = direct_feature_attribution(model, inputs, 1, sae, features, scale)
    assert dfa.per_source.shape == (4, 16, 16, 2, 3) and dfa.per_head.shape == (4, 16, 2, 3)
    torch.testing.assert_close(dfa.per_source.sum(2), dfa.per_head, atol=1e-5, rtol=1e-5)
    _, cache = model.run_with_cache(inputs, names_filter="blocks.1.attn.hook_z")
    x = cache["blocks.1.attn.hook_z"].flatten(2) * scale  # (4, 16, 16)
    pre = sae.pre_activation(x)[..., features]
    expected = pre - sae.b_enc[features] + (sae.b_dec @ sae.W_enc)[features]
    torch.testing.assert_close(dfa.per_head.sum(2), expected, atol=1e-5, rtol=1e-5)
    assert (dfa.per_source[:, torch.arange(16)[:, None] < torch.arange(16)[None, :]] == 0).all(), "causal"


def test_head_shares_and_families() -> None:
    from icl_lab.sae.attribution import (
        Attribution,
        decoder_head_shares,
        feature_families,
        head_polysemanticity,
        source_families,
    )

    sae = sae_of("relu_l1", d_in=4, expansion=1)  # 2 heads of d_head 2
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[0.0, 0, 1, 0], [0.6, 0, 0.8, 0], [1, 0, 0, 0], [0, 0.6, 0, 0.8]]))
    shares = decoder_head_shares(sae, 2)
    torch.testing.assert_close(shares, torch.tensor([[0.0, 1], [3 / 7, 4 / 7], [1, 0], [3 / 7, 4 / 7]]))
    tokens = torch.tensor([[5, 6, 7, 8, 9, 1, 2, 3, 4, 5]])  # the last token 5 occurred at 0; 6 followed it
    family = source_families(tokens)[0]
    assert family[9, 1] == 2, "induction: the source follows an earlier 5"
    assert family[9, 8] == 0 and family[9, 5] == 0 and family[9, 4] == 1 and family[3, 5] == -1
    per_source = torch.zeros(1, 10, 10, 2, 3)
    per_source[0, 9, 1, 0, 0] = 2.0  # feature 0: induction
    per_source[0, 9, 8, 1, 1] = 1.0  # feature 1: short-range, with a smaller long-range part
    per_source[0, 9, 2, 1, 1] = 0.5
    active = torch.zeros(1, 10, 3, dtype=torch.bool)
    active[0, 9, :2] = True  # feature 2 never active
    families = feature_families(Attribution(per_source.sum(2), per_source), tokens, active)
    assert families.tolist() == [2, 0, -1]
    assert head_polysemanticity(torch.tensor([[1.0, 0], [0.6, 0.4], [0.9, 0.1]]), families) == [{0, 2}, set()]


@pytest.mark.parametrize("architecture", ["relu_l1", "topk", "batchtopk", "jumprelu"])
def test_saelens_export_encodes_raw_hook_z_to_our_features(architecture: str, tmp_path) -> None:
    """SAELens's inference rules, written out here, applied to the exported weights and raw
    activations give the features our SAE gives in its own input scale."""
    import json

    from safetensors.torch import load_file

    from icl_lab.sae.export import export_saelens

    fields = {"k": 4} if "topk" in architecture else {}
    sae = sae_of(architecture, d_in=8, expansion=4, **fields)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        sae.b_dec.normal_(generator=g)
        sae.b_enc.normal_(generator=g)
    z = torch.randn(50, 8, generator=g)
    scale = 2.0
    if architecture == "batchtopk":
        sae.encode(z * scale)  # estimates the inference threshold
    sae.eval()
    export_saelens(sae, tmp_path, "blocks.1.attn.hook_z", "run-x", context_size=16, scale=scale)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    w = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert cfg["d_in"] == 8 and cfg["d_sae"] == 32 and cfg["reshape_activations"] == "hook_z"
    assert cfg["metadata"]["hook_name"] == "blocks.1.attn.hook_z" and cfg["apply_b_dec_to_input"]
    pre = (z - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "standard":
        theirs = torch.relu(pre)
    elif cfg["architecture"] == "topk":
        values, index = pre.topk(cfg["k"], dim=-1)
        theirs = torch.zeros_like(pre).scatter(-1, index, torch.relu(values))
    else:
        theirs = torch.relu(pre) * (pre > w["threshold"])
    ours = sae.encode(z * scale)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert (ours > 0).any()
    torch.testing.assert_close(
        theirs @ w["W_dec"] + w["b_dec"], sae.decode(ours) / scale, atol=1e-5, rtol=1e-5
    )


def test_quality_metrics_against_hand_computed_values() -> None:
    from icl_lab.sae.metrics import sae_quality

    sae = sae_of("relu_l1", d_in=4, expansion=1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    # feature i fires on the inputs whose i-th coordinate is positive; reconstruction = relu(x)
    x = torch.tensor([[1.0, 0, 0, 0], [2, -1, 0, 0], [1, 0, 0, 0], [0, 0, 3, 0]])
    q = sae_quality(sae, x, chunk=3)
    assert q.l0 == pytest.approx(4 / 4) and q.mse == pytest.approx(1 / 4)
    variance = (x - x.mean(0)).pow(2).sum().item()
    assert q.explained_variance == pytest.approx(1 - 1 / variance)
    torch.testing.assert_close(q.density, torch.tensor([0.75, 0.0, 0.25, 0.0]))
    assert q.dead_fraction == 0.5 and q.dense_fraction == 0.5
    counts, edges = q.density_histogram(bins=6)
    assert counts.sum() == 2 and edges[0] == -6.0 and edges[-1] == 0.0


def test_families_of_all_features_in_chunks_equal_the_whole_batch_at_once() -> None:
    from conftest import tiny_config
    from icl_lab.experiment import build_model, build_task
    from icl_lab.sae.attribution import all_feature_families, direct_feature_attribution, feature_families

    torch.manual_seed(5)  # fixed initial weights (not whatever ran before) that give several families
    config = tiny_config(task={"name": "induction", "seq_len": 64})
    model, task = build_model(config), build_task(config)  # 64 tokens: sources near and far
    sae = sae_of("relu_l1", d_in=16, expansion=2)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)  # many features active
    tokens = task.sample(3, torch.Generator().manual_seed(0)).inputs
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_z")
    active = sae.encode(cache["blocks.1.attn.hook_z"].flatten(2) * 1.5) > 0
    everything = torch.arange(sae.d_sae)
    attribution = direct_feature_attribution(model, tokens, 1, sae, everything, 1.5)
    whole = feature_families(attribution, tokens, active)
    chunked = all_feature_families(model, tokens, 1, sae, scale=1.5, chunk=5)
    assert torch.equal(whole, chunked)
    assert len(set(whole.tolist())) >= 2, "the test needs features of several families"
