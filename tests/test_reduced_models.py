"""Reddy's reduced models: their limiting behaviour, and the phenomenological fit."""

import math

import numpy as np
import pytest
import torch

from conftest import tiny_config
from icl_lab.analysis.phenomenology import expected_loss, fit_nested_logits, gradient_flow
from icl_lab.evaluation import evaluate
from icl_lab.experiment import build_model, build_task

BURSTY = {"name": "bursty_classification", "n_classes": 256, "burstiness": 2, "no_repeat_labels": True}


def reduced(model: dict, noise: float = 0.0, **values: float) -> tuple:
    config = tiny_config(task={**BURSTY, "noise": noise}, model=model)
    task = build_task(config)
    net = build_model(config, task=task)
    with torch.no_grad():
        for name, value in values.items():
            getattr(net, name).fill_(value)
    return net, task, task.eval_splits()["ic"](2000, torch.Generator().manual_seed(0))


def scores(net: torch.nn.Module, task: object, batch: object) -> dict[str, float]:
    """Scalar metrics, item-label association of layer 0 and the other attention measures of layer 1."""
    values = evaluate(net, task, batch, ["loss", "accuracy", "context_label_accuracy", "fewshot_attention"])
    layer = {"item_label_association": 0}
    return {k: (v if v.dim() == 0 else v[layer.get(k, 1), 0]).item() for k, v in values.items()}


def test_induction_head_model_limits() -> None:
    head = {"name": "induction_head_model", "layer1": "ideal"}
    assert scores(*reduced(head, xi=0.0, beta2=3.0))["loss"] == pytest.approx(math.log(32), abs=1e-5)
    averaging = scores(*reduced(head, xi=60.0, beta2=0.0))
    assert averaging["context_label_accuracy"] == 1.0, "beta2 = 0: it predicts a context label"
    assert averaging["accuracy"] == pytest.approx(1 / 4, abs=0.05), "one of N/B = 4 equally frequent labels"
    sharp = scores(*reduced(head, xi=60.0, beta2=60.0))
    assert sharp["accuracy"] > 0.99 and sharp["target_label_attention"] > 0.99


def test_induction_head_model_loses_in_context_accuracy_with_noise() -> None:
    head = {"name": "induction_head_model", "layer1": "ideal"}
    clean = scores(*reduced(head, noise=0.1, xi=20.0, beta2=10.0))["accuracy"]
    noisy = scores(*reduced(head, noise=3.0, xi=20.0, beta2=10.0))["accuracy"]
    assert clean > 0.95 and noisy < clean - 0.2


def test_learned_layer_one_scales_the_match() -> None:
    head = {"name": "induction_head_model", "layer1": "learned"}
    weak = scores(*reduced(head, xi=20.0, beta1=-6.0, beta2=10.0))
    strong = scores(*reduced(head, xi=20.0, beta1=6.0, beta2=10.0))
    assert strong["item_label_association"] == pytest.approx(1 / (1 + math.exp(-6)), abs=1e-5)
    assert weak["accuracy"] < 0.4 < 0.95 < strong["accuracy"]


def test_nested_logits_limits() -> None:
    nested = {"name": "nested_logits"}
    assert scores(*reduced(nested, z1=-40.0))["loss"] == pytest.approx(math.log(32), abs=1e-4)
    shortcut = scores(*reduced(nested, z1=40.0, z2=-40.0, z3=-40.0))
    assert shortcut["loss"] == pytest.approx(-math.log(2 / 8), abs=1e-4), "p_target = n_target / N"
    assert scores(*reduced(nested, z1=40.0, z2=40.0, z3=40.0))["loss"] == pytest.approx(0.0, abs=1e-4)


def test_mean_field_loss_and_the_saddle_when_all_labels_are_in_context() -> None:
    z = np.array([[-40.0, 0, 0], [40.0, -40, -40], [40.0, 40, 40]])
    np.testing.assert_allclose(expected_loss(z, 32, 0.25), [math.log(32), -math.log(0.25), 0.0], atol=1e-6)
    start = np.array([[-2.0, -3.0, -3.0]])
    _, few_labels = gradient_flow(start, n_labels=32, q=0.25, tau_max=150)
    _, as_many_as_context = gradient_flow(start, n_labels=8, q=1 / 8, tau_max=150)
    assert few_labels[0, -1] < 0.1, "with L > N the shortcut leads out of the plateau"
    assert as_many_as_context[0, -1] > math.log(8) - 0.2, "with L = N the shortcut does not help"


def test_fit_recovers_a_simulated_training_curve() -> None:
    tau, curves = gradient_flow(np.array([[-2.0, -3.0, -3.0]]), 32, 0.25, 300)
    steps = np.arange(0, 1501, 25.0)
    truth = np.interp(0.1 * steps, tau, curves[0])
    noisy = truth + np.random.default_rng(0).normal(0, 0.01, steps.size)
    fit = fit_nested_logits(steps, noisy, 32, 0.25)
    assert fit.rmse < 0.02
    drop = lambda curve: steps[np.argmax(curve < 0.5 * curve[0])]  # noqa: E731
    assert abs(drop(fit.fitted) - drop(truth)) <= 50
    for bad, given in [
        ([], "0 steps, 0 losses"),
        ([0.0], "1 steps, 1 losses"),
        ([0.0, 0.0], "2 steps, 2 losses"),
    ]:
        with pytest.raises(
            ValueError, match=f"two or more points, the last step positive \\(given {given}\\)"
        ):
            fit_nested_logits(np.array(bad), np.ones(len(bad)), 32, 0.25)
    with pytest.raises(ValueError, match="given 3 steps, 2 losses"):
        fit_nested_logits(np.arange(3.0), np.ones(2), 32, 0.25)
    with pytest.raises(ValueError, match="given 2 steps, 2 losses"):
        fit_nested_logits(np.ones((1, 2)), np.ones((1, 2)), 32, 0.25)
    swapped = np.r_[steps[1], steps[0], steps[2:]]
    bad = {
        "steps must increase": (swapped, noisy, 32, 0.25),
        "losses must be finite": (steps, noisy * np.inf, 32, 0.25),
    }
    bad |= {
        "n_labels must be at least 2": (steps, noisy, 0, 0.25),
        "q must be a probability": (steps, noisy, 32, 2.0),
    }
    for what, args in bad.items():
        with pytest.raises(ValueError, match=f"^fit_nested_logits: {what}"):
            fit_nested_logits(*args)


def test_in_weights_paths_add_a_classifier_of_the_query() -> None:
    head = {"name": "induction_head_model", "layer1": "ideal", "in_weights": "mlp", "in_weights_hidden": [16]}
    net, task, batch = reduced(head, xi=0.0, beta2=3.0)
    first, last = net.in_weights
    assert first.weight.std().item() == pytest.approx((2 / first.in_features) ** 0.5, rel=0.1), "He init"
    assert not last.weight.any(), "the path starts silent"
    with torch.no_grad():
        last.weight.normal_()
        expected = torch.relu(batch.inputs[:, -1] @ first.weight.T) @ last.weight.T
        torch.testing.assert_close(net(batch.inputs)[:, 0], expected, msg="xi = 0: the classifier alone")
    old = tiny_config(task=BURSTY, model={"name": "induction_head_model", "in_weights": True})
    assert old.model.in_weights == "linear", "configs from before the mlp path still load"
    assert len(build_model(old, task=task).in_weights) == 1


@pytest.mark.parametrize("path", ["linear", "mlp"])
def test_the_in_weights_path_memorises_classes_without_bursts(path: str, tmp_path) -> None:
    from icl_lab.training.trainer import train

    task = {**BURSTY, "n_classes": 64, "burstiness": 0, "no_repeat_labels": False}
    model = {"name": "induction_head_model", "layer1": "ideal", "in_weights": path}
    training = {"batch_size": 128, "length": {"steps": 300}, "optimizer": {"name": "adam", "lr": 0.01}}
    config = tiny_config(
        task=task, model=model, training=training, eval={"every": {"steps": 300}, "batch_size": 1000}
    )
    run = train(config, str(tmp_path), progress=False)
    _, iw = run.curve("accuracy", "iw")
    assert iw[-1] > 0.5, f"in-weights accuracy {iw[-1]:.2f} after 300 steps (chance 1/32)"
