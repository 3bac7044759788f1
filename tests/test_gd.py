"""von Oswald et al.: the linear-regression token task, linear self-attention and its
gradient-descent construction against closed forms."""

import pytest
import torch

from icl_lab.analysis.gd import (
    compare_with_gd,
    effective_lr,
    interpolated_loss,
    query_predictor,
    sensitivities,
    tune_gd,
)
from icl_lab.experiment import build_model, validate_config
from icl_lab.models.linear_self_attention import (
    best_gd_lr,
    gd_construction,
    gd_plus_plus_predictions,
    gd_predictions,
)
from icl_lab.report.page import write_report
from icl_lab.tasks.linear_regression_tokens import LinearRegressionTokensConfig, LinearRegressionTokensTask
from icl_lab.training.trainer import train


def config(n_layers: int = 1, **task: object):
    return validate_config(
        {
            "name": "gd",
            "task": {"name": "linear_regression_tokens", **task},
            "model": {"name": "linear_self_attention", "n_layers": n_layers},
            "training": {"length": {"steps": 1}},
        }
    )


def batch(n: int, seed: int = 0, **task: object):
    t = LinearRegressionTokensTask(LinearRegressionTokensConfig(**task), seed=0)
    return t, t.sample(n, torch.Generator().manual_seed(seed))


def test_generator_statistics() -> None:
    for r in (1.0, 2.0):
        _, b = batch(20000, input_range=r)
        x = b.inputs[..., :-1]
        assert x.abs().max() <= r / 2
        assert x.var().item() == pytest.approx(r**2 / 12, rel=0.02), "U(-r/2, r/2) has variance r^2/12"
        y = torch.einsum("bnd,bd->bn", x, b.meta["w"])
        assert torch.allclose(b.inputs[:, :-1, -1], y[:, :-1]) and torch.all(b.inputs[:, -1, -1] == 0)
        assert torch.allclose(b.targets[:, 0], y[:, -1])
    _, b = batch(20000)
    assert b.meta["w"].std().item() == pytest.approx(1.0, rel=0.02)


def test_variance_scaling_init_matches_haiku() -> None:
    """Haiku's VarianceScaling(scale), the authors' init: truncated at two standard deviations of
    the underlying normal, variance scale / fan_in after truncation."""
    data = config().model_dump()
    heads, d = 16, 11
    data["model"] |= {"n_heads": heads, "init": "variance_scaling", "init_scale": 0.5}
    model = build_model(validate_config(data), "cpu")
    torch.manual_seed(0)
    model.reset_parameters()
    block = model.blocks[0]
    for weights, fan_in in ((block.W_Q, d), (block.W_K, d), (block.W_V, d), (block.W_O, heads * d)):
        target = (0.5 / fan_in) ** 0.5
        assert weights.std().item() == pytest.approx(target, rel=0.06), "about 4 sd of the sample std"
        assert weights.abs().max().item() <= 2 * target / 0.8796 + 1e-7
        assert weights.abs().max().item() >= 1.8 * target / 0.8796, "the tails reach the truncation"


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_gd_construction_equals_gradient_descent_steps(layers: int) -> None:
    model = build_model(config(layers))
    gd_construction(model, lr=0.7, n_points=10)
    _, b = batch(64)
    expected = gd_predictions(b.inputs, 0.7, layers)
    assert torch.allclose(model(b.inputs)[:, -1, 0], expected, atol=1e-5)


def test_one_gd_step_in_closed_form() -> None:
    _, b = batch(8)
    x, y, xq = b.inputs[:, :-1, :-1], b.inputs[:, :-1, -1], b.inputs[:, -1, :-1]
    by_hand = 0.3 / 10 * torch.stack([sum(y[i, j] * x[i, j] @ xq[i] for j in range(10)) for i in range(8)])
    assert torch.allclose(gd_predictions(b.inputs, 0.3, 1), by_hand, atol=1e-6)


@pytest.mark.parametrize(("r", "lr_over_n", "loss"), [(1.0, 0.590, 0.2074), (2.0, None, 0.823)])
def test_best_one_step_gd_matches_the_papers_checked_numbers(r: float, lr_over_n, loss: float) -> None:
    task, b = batch(400_000, seed=1, input_range=r)
    lr, best = best_gd_lr(b.inputs, b.targets[:, 0])
    assert best == pytest.approx(loss, rel=0.02)
    if lr_over_n is not None:
        # the loss is flat near its minimum: our optimum lr/N is 0.606 on this sample, and the
        # paper's 0.590 costs under 0.2% more
        assert lr / 10 == pytest.approx(lr_over_n, rel=0.05)
        paper = gd_predictions(b.inputs, lr_over_n * 10, 1)
        assert 0.5 * ((paper - b.targets[:, 0]) ** 2).mean().item() == pytest.approx(best, rel=0.002)
    zero = task.loss(torch.zeros(len(b.targets), 11, 1), b.targets, b.loss_mask).item()
    assert zero == pytest.approx(10 * r**2 / 24, rel=0.02), "zero predictor: E[y^2]/2 = d r^2 / 24"


def test_sensitivities_against_autograd_on_a_known_model() -> None:
    _, b = batch(32)
    w = torch.randn(10)
    predict = lambda t: (t[:, -1, :-1] @ w) ** 2 + t[:, :-1, -1].sum(1)  # noqa: E731
    expected = 2 * (b.inputs[:, -1, :-1] @ w)[:, None] * w  # d/dx_q of (w.x_q)^2
    assert torch.allclose(sensitivities(predict, b.inputs), expected, atol=1e-5)
    # one GD step's prediction is linear in x_q with slope (lr / N) sum_i y_i x_i
    x, y = b.inputs[:, :-1, :-1], b.inputs[:, :-1, -1]
    slope = 0.4 / 10 * torch.einsum("bn,bnd->bd", y, x)
    assert torch.allclose(sensitivities(lambda t: gd_predictions(t, 0.4, 1), b.inputs), slope, atol=1e-6)


def test_the_construction_compares_as_gd_itself() -> None:
    model = build_model(config(1))
    gd_construction(model, lr=5.9, n_points=10)
    _, b = batch(256)
    result = compare_with_gd(query_predictor(model), b.inputs, b.targets[:, 0], lr=5.9)
    assert result.cosine == pytest.approx(1.0, abs=1e-5)
    assert result.sensitivity_l2 < 1e-5 and result.prediction_diff < 1e-5
    assert result.model_loss == pytest.approx(result.gd_loss, rel=1e-5)
    assert effective_lr(model) == pytest.approx(0.59, rel=1e-6)
    twin = build_model(config(1))  # the same function with rescaled, sign-flipped weights
    gd_construction(twin, lr=5.9, n_points=10)
    with torch.no_grad():
        twin.blocks[0].W_Q.mul_(-2.0)
        twin.blocks[0].W_K.mul_(-0.5)
        twin.blocks[0].W_V.mul_(-3.0)
        twin.blocks[0].W_O.div_(-3.0)
    assert torch.allclose(twin(b.inputs), model(b.inputs), atol=1e-5)
    assert effective_lr(twin) == pytest.approx(0.59, rel=1e-5)
    halfway = interpolated_loss(model, twin, b.inputs, b.targets[:, 0])
    assert halfway == pytest.approx(result.gd_loss, rel=1e-5)
    with torch.no_grad():  # W_Q W_K^T times -4 and W_V W_O divided by -4: the same function again
        twin.blocks[0].W_Q.mul_(-4.0)
        twin.blocks[0].W_V.div_(-4.0)
    assert torch.allclose(twin(b.inputs), model(b.inputs), atol=1e-5)
    halfway = interpolated_loss(model, twin, b.inputs, b.targets[:, 0])
    assert halfway == pytest.approx(result.gd_loss, rel=1e-5), "the authors' normalisation"


def test_tuned_gd_agrees_with_the_closed_form_for_one_step_and_gd_plus_plus_helps() -> None:
    _, b = batch(8000, seed=3)
    closed_lr, closed_loss = best_gd_lr(b.inputs, b.targets[:, 0])
    lr, gamma, loss = tune_gd(b.inputs, b.targets[:, 0], steps=1)
    assert gamma == 0 and lr == pytest.approx(closed_lr, abs=0.01 * 10)
    assert loss == pytest.approx(closed_loss, rel=1e-3)
    _, _, two = tune_gd(b.inputs, b.targets[:, 0], steps=2)
    assert two < loss, "a second step helps"
    _, gamma, two_plus = tune_gd(b.inputs, b.targets[:, 0], steps=2, plus_plus=True)
    assert gamma > 0 and two_plus < two, "curvature correction helps"


@pytest.mark.parametrize("layers", [1, 3])
def test_gd_plus_plus_construction_and_its_gd_limit(layers: int) -> None:
    _, b = batch(64)
    plain = gd_predictions(b.inputs, 0.7, layers)
    assert torch.allclose(gd_plus_plus_predictions(b.inputs, 0.7, 0.0, layers), plain, atol=1e-5)
    model = build_model(config(layers))
    gd_construction(model, lr=0.7, n_points=10, gamma=0.05)
    expected = gd_plus_plus_predictions(b.inputs, 0.7, 0.05, layers)
    assert torch.allclose(model(b.inputs)[:, -1, 0], expected, atol=1e-5)
    if layers > 1:
        assert not torch.allclose(expected, plain, atol=1e-3), "the curvature correction matters"


def test_linear_self_attention_trains_and_reports(tmp_path) -> None:
    """The trainer fits the LSA model (loss falls from the zero predictor's ~0.42), and its report
    has the training curves but no attention-pattern figure (the model has no softmax pattern)."""
    cfg = validate_config(
        {
            **config(1).model_dump(mode="json"),
            "training": {
                "optimizer": {"name": "adam", "lr": 1e-2},
                "batch_size": 512,
                "length": {"steps": 300},
            },
            "eval": {"every": {"steps": 100}, "batch_size": 2048},
            "checkpointing": {"every": {"steps": 300}},
        }
    )
    run = train(cfg, str(tmp_path), progress=False)
    _, loss = run.curve("loss", "train")
    assert loss[0] > 0.35 and loss[-1] < 0.25
    report = write_report(run)
    assert (report.parent / "training.png").exists() and not (report.parent / "attention.png").exists()


def test_clip_bounds_the_residual_stream_after_every_layer() -> None:
    """As the authors' transformer.py: h = clip(h + attn(h), -clip, clip) after each layer."""
    data = {**config(2).model_dump(mode="json"), "model": {"name": "linear_self_attention", "n_layers": 2}}
    plain = build_model(validate_config(data))
    clipped = build_model(validate_config({**data, "model": {**data["model"], "clip": 0.3}}))
    clipped.load_state_dict(plain.state_dict())
    gd_construction(plain, lr=5.0, n_points=10)  # large steps: the stream leaves +-0.3
    gd_construction(clipped, lr=5.0, n_points=10)
    _, b = batch(32)
    e = b.inputs
    for block in plain.blocks:
        e = (e + block(e)).clamp(-0.3, 0.3)
    assert plain(b.inputs).abs().max() > 0.3
    torch.testing.assert_close(clipped(b.inputs), -e[..., -1:])
    assert clipped(b.inputs).abs().max() <= 0.3


def test_shared_weights_apply_one_layer_repeatedly() -> None:
    shared = build_model(
        validate_config(
            {
                **config(3).model_dump(mode="json"),
                "model": {"name": "linear_self_attention", "n_layers": 3, "share_weights": True},
            }
        )
    )
    assert len(shared.blocks) == 1 and sum(p.numel() for p in shared.parameters()) == 4 * 11 * 11
    gd_construction(shared, lr=0.7, n_points=10)
    _, b = batch(32)
    assert torch.allclose(shared(b.inputs)[:, -1, 0], gd_predictions(b.inputs, 0.7, 3), atol=1e-5)
