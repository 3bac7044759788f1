"""Components a researcher defines in a notebook, a script or a module their config imports: a
task, metric and clamp kind registered after icl-lab is imported train from YAML and Python alike."""

import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch
import yaml
from torch import Tensor

from conftest import tiny_config
from icl_lab.config import TaskConfig
from icl_lab.errors import ComponentError
from icl_lab.experiment import ExperimentConfig
from icl_lab.interventions import CLAMPS, Clamp
from icl_lab.interventions.base import ClampContext
from icl_lab.metrics import METRICS, EvalContext, metric
from icl_lab.models import ModelIO
from icl_lab.registry import Registry
from icl_lab.store.run import Run
from icl_lab.tasks import TASKS, Batch, Task
from icl_lab.training.trainer import train


class CountingConfig(TaskConfig):
    """Predict the next token of a cyclic count modulo `modulus`."""

    name: Literal["test_counting"] = "test_counting"
    modulus: int = 7
    seq_len: int = 12


@TASKS.register("test_counting")
class CountingTask(Task):
    """Cyclic counting from a random start: token t + 1 = token t + 1 (mod m)."""

    Config = CountingConfig
    meta_keys = ("start",)
    default_metrics = ("loss", "accuracy", "test_start_accuracy")

    @classmethod
    def io(cls, config: CountingConfig) -> ModelIO:
        return ModelIO(n_ctx=config.seq_len, d_out=config.modulus, d_vocab=config.modulus)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        c = self.config
        start = torch.randint(c.modulus, (batch_size,), generator=generator)
        tokens = (start[:, None] + torch.arange(c.seq_len)) % c.modulus  # (B, T)
        targets = (tokens + 1) % c.modulus
        return Batch(tokens, targets, torch.ones_like(tokens, dtype=torch.bool), {"start": start})


@metric("test_start_accuracy", meta=("start",), classes=True)
def start_accuracy(ctx: EvalContext) -> dict[str, Tensor]:
    """Accuracy of the first prediction (the token after the start)."""
    hits = ctx.output_logits[:, 0].argmax(-1) == (ctx.batch.meta["start"] + 1) % ctx.output_logits.shape[-1]
    return {"start_accuracy": hits.float().mean()}


@CLAMPS.register("test_scale_logits")
class ScaleLogits(Clamp):
    """Multiply the logits by a constant."""

    kind: Literal["test_scale_logits"] = "test_scale_logits"
    factor: float = 2.0

    def hooks(self, ctx: ClampContext) -> list:
        return [("hook_logits", lambda x, hook: torch.where(ctx.on, x * self.factor, x))]


def counting_config(tmp_path: Path) -> Path:
    data = tiny_config().model_dump(mode="json", by_alias=True)
    data["task"] = {"name": "test_counting", "modulus": 7, "seq_len": 12}
    data["clamps"] = [{"kind": "test_scale_logits", "factor": 1.5, "steps": {"from": 0, "until": 4}}]
    path = tmp_path / "counting.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_task_metric_and_clamp_registered_after_import_train_from_yaml(cli, tmp_path: Path) -> None:
    code, out, err = cli("train", counting_config(tmp_path), "--runs-dir", tmp_path / "runs", "-q")
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    run = Run.open(run_dir)
    assert run.status == "complete" and run.config.clamps[0].kind == "test_scale_logits"
    steps, values = run.curve("start_accuracy", "train")
    assert list(steps) == [0, 4, 8, 12] and all(0 <= v <= 1 for v in values)
    code, out, _ = cli("list", "tasks")
    assert "test_counting" in out


def test_an_unknown_component_names_what_is_known(cli, tmp_path: Path) -> None:
    code, _, err = cli("train", "induction", "--set", "task.name=nope", "--runs-dir", tmp_path)
    assert code == 2 and "task: unknown choice 'nope'" in err and "test_counting" in err
    assert not any(tmp_path.iterdir())


MODULE = '''
from typing import Literal
import torch
from icl_lab.config import TaskConfig
from icl_lab.models import ModelIO
from icl_lab.tasks import TASKS, Batch, Task


class ConstantConfig(TaskConfig):
    name: Literal["constant_tokens"] = "constant_tokens"


@TASKS.register("constant_tokens")
class ConstantTask(Task):
    """Every token is 3."""

    Config = ConstantConfig

    @classmethod
    def io(cls, config):
        return ModelIO(n_ctx=8, d_out=5, d_vocab=5)

    def sample(self, batch_size, generator):
        tokens = torch.full((batch_size, 8), 3)
        return Batch(tokens, tokens, torch.ones_like(tokens, dtype=torch.bool))
'''


def test_a_config_imports_its_own_module_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "my_tasks.py").write_text(MODULE)
    data = tiny_config().model_dump(mode="json", by_alias=True)
    data |= {"imports": ["my_tasks.py"], "task": {"name": "constant_tokens"}}
    (tmp_path / "configs" / "run.yaml").write_text(yaml.safe_dump(data))
    icl_lab = Path(sys.executable).with_name("icl-lab")
    done = subprocess.run(
        [icl_lab, "train", "configs/run.yaml", "-q", "--runs-dir", "runs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    module = tmp_path / "configs" / "my_tasks.py"
    assert saved["imports"] == [str(module)], "found beside the config, stored absolute: reopens anywhere"
    _, loss = Run.open(run_dir).curve("loss", "train")
    assert loss[-1] < loss[0], "a constant sequence is learned"
    data["imports"] = ["missing_module.py"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    done = subprocess.run([icl_lab, "train", "bad.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert f"imports: file not found: {tmp_path / 'missing_module.py'}" in done.stderr


def test_redefining_a_component_replaces_it_but_a_clash_is_refused() -> None:
    registry: Registry[object] = Registry("widget")

    def make() -> type:
        class Widget:  # the same module and qualified name each time: a re-run notebook cell
            pass

        return Widget

    first, second = make(), make()
    registry.register("w")(first)
    registry.register("w")(second)
    assert registry.get("w") is second
    with pytest.raises(ValueError, match="already registered by"):
        registry.register("w")(Registry)
    assert "test_start_accuracy" in METRICS


class BuggyConfig(CountingConfig):
    """Counting with a user's bug in its sampler."""

    name: Literal["test_buggy_counting"] = "test_buggy_counting"
    bug: Literal["short", "raise"] = "short"


@TASKS.register("test_buggy_counting")
class BuggyCounting(CountingTask):
    """Counting whose sampler draws half the training sequences asked for (`short`) or raises, first
    when the trainer draws its eval batches (`raise`)."""

    Config = BuggyConfig

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        if self.config.bug == "raise":
            raise ValueError("bug in my sampler")
        return super().sample(batch_size // 2 if batch_size == 8 else batch_size, generator)


@metric("test_per_token")
def per_token(ctx: EvalContext) -> dict[str, Tensor]:
    """A per-token value, which the metrics table cannot hold."""
    return {"per_token": ctx.output_logits[..., 0]}


@metric("test_loss_again")
def loss_again(ctx: EvalContext) -> dict[str, Tensor]:
    """A value under the name of the built-in loss."""
    return {"loss": torch.tensor(123.0)}


@metric("test_not_a_dict")
def not_a_dict(ctx: EvalContext) -> Tensor:
    return torch.tensor(1.0)


def counting(name: str, bug: str | None = None, **sections: object) -> ExperimentConfig:
    """A tiny model on a counting task registered here (a buggy one's bug named)."""
    task = {"name": name, "modulus": 7, "seq_len": 12, **({"bug": bug} if bug else {})}
    return tiny_config(task=task, **sections)


def test_a_task_that_draws_the_wrong_batch_size_stops_the_run_marked_failed(tmp_path: Path) -> None:
    with pytest.raises(
        ComponentError, match=r"task 'test_buggy_counting' sampled 4 sequences .* for a batch of 8"
    ):
        train(counting("test_buggy_counting"), str(tmp_path), progress=False)
    (run_dir,) = tmp_path.iterdir()
    assert Run.open(run_dir).status == "failed"


def test_a_task_that_fails_before_training_leaves_its_run_failed_not_running(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bug in my sampler"):
        train(counting("test_buggy_counting", bug="raise"), str(tmp_path), progress=False)
    (run_dir,) = tmp_path.iterdir()
    run = Run.open(run_dir)
    assert run.status == "failed" and run.manifest["error"] == "ValueError: bug in my sampler"


@pytest.mark.parametrize(
    "metrics, message",
    [
        (
            ["test_per_token"],
            r"'per_token' of shape \(16, 12\): a value must be 0-d or per head, "
            r"\(n_layers, n_heads\) = \(2, 2\)",
        ),
        (
            ["loss", "test_loss_again"],
            "metric 'test_loss_again' returns 'loss', which an earlier metric returned",
        ),
        (["test_not_a_dict"], "metric 'test_not_a_dict' must return a dict of tensors, not Tensor"),
    ],
)
def test_a_metric_whose_values_the_table_cannot_hold_is_refused(tmp_path: Path, metrics, message) -> None:
    with pytest.raises(ComponentError, match=message):
        train(counting("test_counting", eval={"metrics": metrics}), str(tmp_path), progress=False)
    assert METRICS.get("test_not_a_dict").description == ""  # no docstring: registered all the same
