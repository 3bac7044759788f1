"""Metrics are checked against the model and task with the rest of the config: a metric that reads
something they lack is refused before anything is written, and defaults keep what applies."""

from pathlib import Path

import pytest
import torch

from conftest import TINY_BURSTY, TINY_READOUT_MODEL, tiny_config
from icl_lab.config import TaskConfig
from icl_lab.errors import ConfigError
from icl_lab.evaluation import metric_names
from icl_lab.experiment import build_model, build_task, load_config
from icl_lab.metrics.head_detectors import ov_copying_score
from icl_lab.tasks import TASKS

MIXER = "model={name: mixer_lm, mixer: gru, n_layers: 1, d_model: 16}"
BURSTY = (
    "task={name: bursty_classification, n_classes: 64, n_labels: 8, dim: 15, n_context: 4, burstiness: 2}"
)
READOUT = "model={name: transformer, n_layers: 2, n_heads: 2, d_model: 16, readout: {positions: [-1]}}"
MISMATCHES = [
    ("induction", [MIXER], "prefix_matching", "reads blocks.*.attn.hook_pattern, which model MixerLM"),
    ("induction", [MIXER], "head_detectors", "reads blocks.*.attn.hook_pattern"),
    ("icll", [MIXER], "ngram_heads", "reads blocks.*.attn.hook_pattern"),
    ("induction", [MIXER], "copying_eigenvalues", "reads attention heads' W_V and W_O"),
    (
        "induction",
        ["model.output_projection=false"],
        "copying_eigenvalues",
        "reads each head's W_O, but the model has no output",
    ),
    ("reddy_fast", [], "copying_eigenvalues", "needs token embeddings and an unembedding"),
    ("reddy_fast", [], "head_detectors", "reads token ids, but task bursty_classification gives vectors"),
    ("reddy_fast", [], "prefix_matching", "reads period, repeat_end from the batch"),
    ("reddy_fast", [], "icl_score", "needs a target at every position"),
    ("icll", [], "copying", "reads period, repeat_end from the batch, which task regbench does not give"),
    ("induction", [], "context_label_accuracy", "reads context_labels from the batch"),
    ("induction", [], "validity_accuracy", "reads valid from the batch"),
    ("gd", [], "accuracy", "needs class targets, but task linear_regression_tokens predicts values"),
    ("singh", [], "tvd", "reads valid from the batch, which task fewshot_pairs does not give"),
]


@pytest.mark.parametrize(("config", "overrides", "metric", "message"), MISMATCHES)
def test_a_metric_the_model_or_task_cannot_give_is_refused_before_anything_is_written(
    cli, tmp_path: Path, config: str, overrides: list[str], metric: str, message: str
) -> None:
    args = [x for o in [*overrides, f"eval.metrics=[loss, {metric}]"] for x in ("--set", o)]
    code, out, err = cli("train", config, *args, "--runs-dir", tmp_path / "runs")
    assert code == 2, out + err
    assert err.count("\n") == 1 and f"eval.metrics: {metric} {message}" in err
    assert not (tmp_path / "runs").exists()


def test_default_metrics_keep_those_that_apply_to_the_model() -> None:
    mixer = load_config("induction", [MIXER])
    assert metric_names(mixer, build_model(mixer)) == ["loss", "accuracy", "icl_score", "copying"]
    transformer = load_config("induction")
    assert metric_names(transformer, build_model(transformer)) == list(TASKS.get("induction").default_metrics)


def test_every_task_declares_the_meta_its_batches_carry() -> None:
    configs = ["induction", "reddy_fast", "singh", "gd", "function_classes"]
    for name in configs:
        config = load_config(name)
        task = build_task(config)
        for split, sampler in task.eval_splits().items():
            batch = sampler(4, torch.Generator().manual_seed(0))
            assert set(batch.meta) == set(type(task).meta_keys), (name, split)


def test_copying_score_of_a_head_that_never_reaches_the_logits_is_zero() -> None:
    W_E, W_U = torch.randn(10, 8), torch.randn(8, 10)
    W_V, W_O = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 4, 8)
    W_O[0, 1] = 0  # head 1 writes nothing
    W_V[0, 0], W_O[0, 0] = torch.eye(8)[:, :4], torch.eye(8)[:4]  # W_V W_O: a rank-4 projection P
    W_U = W_E.T.clone()  # W_E W_V W_O W_U = W_E P W_E^T: positive semi-definite, copies
    score = ov_copying_score(W_E, W_V, W_O, W_U)
    assert score[0, 1].item() == 0.0 and not score.isnan().any()
    assert score[0, 0].item() == pytest.approx(1.0, abs=1e-5)


def test_a_readout_transformer_on_a_fewshot_task_keeps_the_attention_metrics() -> None:
    config = tiny_config(task=TINY_BURSTY, model=TINY_READOUT_MODEL)
    names = metric_names(config, build_model(config))
    assert "fewshot_attention" in names and "context_label_accuracy" in names
    with pytest.raises(ConfigError, match="copying"):
        tiny_config(task=TINY_BURSTY, model=TINY_READOUT_MODEL, eval={"metrics": ["copying"]})
    assert issubclass(type(config.task), TaskConfig)
