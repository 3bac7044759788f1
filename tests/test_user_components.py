"""Components a researcher defines in a notebook, a script or a module their config imports: a
task, metric and clamp kind registered after icl-lab is imported train from YAML and Python alike."""

import hashlib
import re
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
from icl_lab.errors import ComponentError, ConfigError, RunStoreError
from icl_lab.evaluation import evaluate
from icl_lab.experiment import ExperimentConfig
from icl_lab.interventions import CLAMPS, Clamp
from icl_lab.interventions.base import ClampContext
from icl_lab.metrics import METRICS, EvalContext, metric
from icl_lab.models import ModelIO
from icl_lab.registry import Registry
from icl_lab.store.run import Run
from icl_lab.sweeps.execute import run_job
from icl_lab.tasks import TASKS, Batch, Task
from icl_lab.tasks.base import MembersSampler
from icl_lab.training.trainer import resume, train


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
    task, batches = run.eval_data()
    model, logged = run.model(step=0), run.curve("loss", "train")[1]
    scaled, plain = (
        evaluate(model, task, batches["train"], ["loss"], c)["loss"] for c in (run.config.clamps, [])
    )
    assert logged[0] == pytest.approx(float(scaled)) and float(scaled) != pytest.approx(float(plain))
    late = evaluate(run.model(step=12), task, batches["train"], ["loss"])["loss"]
    assert logged[-1] == pytest.approx(float(late)), "the clamp's window closed at step 4"
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
from icl_lab.tasks.base import MembersSampler


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


MORE = """
from typing import Literal
from my_helpers import FOUR
from my_tasks import ConstantConfig, ConstantTask
from icl_lab.tasks import TASKS, Batch


class FoursConfig(ConstantConfig):
    name: Literal["constant_fours"] = "constant_fours"


@TASKS.register("constant_fours")
class FoursTask(ConstantTask):
    \"\"\"Every token is 4 (a task of a second module, built on the first and a helper beside them).\"\"\"

    Config = FoursConfig

    def sample(self, batch_size, generator):
        batch = super().sample(batch_size, generator)
        return Batch(batch.inputs + FOUR - 3, batch.targets + FOUR - 3, batch.loss_mask)
"""


def test_a_config_imports_its_own_modules_from_the_command_line(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "my_tasks.py").write_text(MODULE)
    (configs / "more_tasks.py").write_text(MORE)
    (configs / "my_helpers.py").write_text("FOUR = 4\n")
    data = tiny_config().model_dump(mode="json", by_alias=True)
    data |= {"imports": ["my_tasks.py", "more_tasks.py"], "task": {"name": "constant_fours"}}
    (configs / "run.yaml").write_text(yaml.safe_dump(data))
    icl_lab = Path(sys.executable).with_name("icl-lab")

    def run(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([icl_lab, *map(str, args)], cwd=tmp_path, capture_output=True, text=True)

    done = run("train", "configs/run.yaml", "-q", "--runs-dir", "runs")
    assert done.returncode == 0, done.stderr  # one module imported by the other is imported once
    (run_dir,) = (tmp_path / "runs").iterdir()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["imports"] == [str(configs / "my_tasks.py"), str(configs / "more_tasks.py")], (
        "found beside the config, stored absolute: reopens anywhere"
    )
    stored = Run.open(run_dir)
    assert stored.manifest["sources"] == {
        str(configs / name): hashlib.sha256((configs / name).read_bytes()).hexdigest()
        for name in ("my_tasks.py", "more_tasks.py")
    }
    _, loss = stored.curve("loss", "train")
    assert loss[-1] < loss[0], "a constant sequence is learned"
    (configs / "my_tasks.py").rename(tmp_path / "moved.py")
    done = run("list", "runs", "--runs-dir", "runs")
    assert done.returncode == 0 and "unreadable" in done.stdout
    assert f"{Path('runs') / run_dir.name}: imports: file not found: {configs / 'my_tasks.py'}" in done.stdout
    data["imports"] = ["missing_module.py"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    done = run("train", "bad.yaml")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert f"imports: file not found: {tmp_path / 'missing_module.py'}" in done.stderr


def test_a_run_refuses_to_continue_once_the_code_it_imports_has_changed(tmp_path: Path) -> None:
    module = tmp_path / "edited_tasks.py"
    module.write_text(MODULE.replace("constant_tokens", "test_edited_constant"))
    config = tiny_config(imports=[str(module)], task={"name": "test_edited_constant"})
    run = train(config, str(tmp_path / "runs"), progress=False)
    run.check_sources()
    original = module.read_text()
    module.write_text(original + "# an edit\n")
    changed = f"run {run.id} was trained with another version of {module}: restore the file"
    with pytest.raises(RunStoreError, match=re.escape(changed)):
        resume(Run.open(run.path), progress=False)
    assert run_job(str(run.path), [config.to_yaml()]) == (
        "failed",
        f"RunStoreError: {changed} as it was to continue the run, or train a new run",
    )
    module.write_text(original)
    Run.open(run.path).check_sources()


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
    bug: Literal["short", "raise", "out_of_vocab", "cut", "members_short", "members_out_of_vocab"] = "short"


@TASKS.register("test_buggy_counting")
class BuggyCounting(CountingTask):
    """Counting whose sampler draws half the training sequences asked for (`short`), raises first
    when the trainer draws its eval batches (`raise`), draws tokens beyond the vocabulary
    (`out_of_vocab`) or sequences a token shorter than its io says (`cut`); or whose sampler of all
    members' batches at once draws one member too few (`members_short`) or tokens beyond the
    vocabulary (`members_out_of_vocab`)."""

    Config = BuggyConfig

    @classmethod
    def members_sampler(cls, tasks: list[Task]) -> MembersSampler | None:
        bug = tasks[0].config.bug
        if not bug.startswith("members"):
            return None

        def sample(n: int, generators: list[torch.Generator], step: int) -> Batch:
            batch = Batch.stack([t.sample(n, g) for t, g in zip(tasks, generators, strict=True)])
            if bug == "members_short":
                return Batch.stack([batch.member(m) for m in range(len(tasks) - 1)])
            return Batch(batch.inputs + 1, batch.targets, batch.loss_mask, batch.meta)

        return sample

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        bug = self.config.bug
        if bug == "raise":
            raise ValueError("bug in my sampler")
        batch = super().sample(
            batch_size // 2 if batch_size == 8 and bug == "short" else batch_size, generator
        )
        if bug == "out_of_vocab":
            return Batch(batch.inputs + 1, batch.targets, batch.loss_mask, batch.meta)
        return (
            Batch(batch.inputs[:, :-1], batch.targets[:, :-1], batch.loss_mask[:, :-1])
            if bug == "cut"
            else batch
        )


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


class KeyOffConfig(CountingConfig):
    """Counting whose key metric summarises heads by a median, which the progress line cannot."""

    name: Literal["test_key_off"] = "test_key_off"


@TASKS.register("test_key_off")
class KeyOff(CountingTask):
    """Counting following the median of a metric over heads."""

    Config = KeyOffConfig
    key_metric = ("train", "loss", "median")


def test_a_task_whose_key_metric_cannot_be_summarised_is_refused() -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "task: test_key_off's key_metric ('train', 'loss', 'median') must end in a summary over heads"
        ),
    ):
        counting("test_key_off")


def test_a_task_that_draws_the_wrong_batch_size_stops_the_run_marked_failed(tmp_path: Path) -> None:
    with pytest.raises(
        ComponentError, match=r"task 'test_buggy_counting' sampled 4 sequences .* for a batch of 8"
    ):
        train(counting("test_buggy_counting"), str(tmp_path), progress=False)
    (run_dir,) = tmp_path.iterdir()
    assert Run.open(run_dir).status == "failed"


@pytest.mark.parametrize(
    "bug, message",
    [
        ("out_of_vocab", "task 'test_buggy_counting' sampled token ids from 1 to 7, outside 0..6"),
        (
            "cut",
            r"task 'test_buggy_counting' sampled inputs, targets and loss mask of shapes \(16, 11\), "
            r"\(16, 11\), \(16, 11\); its io asks for \(16, 12\), \(16, 12\) and \(16, 12\)",
        ),
    ],
)
def test_a_task_whose_batches_break_its_io_is_named_before_training(tmp_path: Path, bug, message) -> None:
    with pytest.raises(ComponentError, match=message):
        train(counting("test_buggy_counting", bug=bug), str(tmp_path), progress=False)
    (run_dir,) = tmp_path.iterdir()
    assert Run.open(run_dir).status == "failed"


@pytest.mark.parametrize(
    "bug, message",
    [
        ("members_short", "task 'test_buggy_counting' drew 1 members' batches for 2"),
        ("members_out_of_vocab", "task 'test_buggy_counting' sampled token ids from 1 to 7, outside 0..6"),
    ],
)
def test_a_task_sampling_all_members_at_once_is_checked_like_one_member(tmp_path: Path, bug, message) -> None:
    members = [counting("test_buggy_counting", bug=bug, seed=seed) for seed in (0, 1)]
    with pytest.raises(ComponentError, match=message):
        train(members, str(tmp_path), progress=False)
    (run_dir,) = tmp_path.iterdir()
    assert Run.open(run_dir).status == "failed"


def test_a_task_error_names_the_line_of_the_users_code_that_raised_it(cli, tmp_path: Path) -> None:
    data = counting("test_buggy_counting", bug="raise").model_dump(mode="json", by_alias=True)
    (tmp_path / "buggy.yaml").write_text(yaml.safe_dump(data))
    code, _, err = cli("train", tmp_path / "buggy.yaml", "--runs-dir", tmp_path / "runs")
    raising = next(
        i for i, line in enumerate(Path(__file__).read_text().splitlines(), 1) if "bug in my" in line
    )
    assert code == 2 and err.strip().count("\n") == 0
    assert f"error in BuggyCounting.sample ({__file__}:{raising}): ValueError: bug in my sampler" in err


def test_a_compiled_extension_is_not_taken_for_users_code(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from icl_lab.errors import user_frame

    (tmp_path / "t.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(Exception) as caught:  # pyarrow's own error, whatever its class
        pq.read_table(tmp_path / "t.parquet")
    assert ".pxi" in "".join(str(f.path) for f in caught.traceback), "through pyarrow's Cython"
    assert user_frame(caught.value).startswith("test_a_compiled_extension_is_not_taken_for_users_code (")


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
