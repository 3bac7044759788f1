"""The one experiment config (task, model, clamps, training, eval, checkpointing) and its builders."""

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

import torch
import yaml
from pydantic import BaseModel, Field, PlainValidator, SerializeAsAny, model_validator

from icl_lab.config import (
    CheckpointConfig,
    EvalConfig,
    ModelConfig,
    Name,
    StrictModel,
    TaskConfig,
    TrainingConfig,
    drop_later_defaults,
    validated,
)
from icl_lab.errors import ConfigError
from icl_lab.interventions import CLAMPS, Clamp
from icl_lab.metrics import METRICS
from icl_lab.models import MODELS, Model
from icl_lab.registry import Registry, import_user_module
from icl_lab.seeding import forked_generators
from icl_lab.tasks import TASKS, Task
from icl_lab.training.compiled import AUTO_MEMBER_STEPS
from icl_lab.yaml_text import load_yaml

BUNDLED_CONFIGS = Path(__file__).parent / "configs"


def registered(registry: Registry[Any], field: str, base: type[BaseModel], config_of: Any) -> Any:
    """A config section whose class is looked up in `registry` by its `field` (a task's name, a
    clamp's kind) when the config is validated, so components registered after import count."""

    def resolve(value: object) -> BaseModel:
        data = value.model_dump(by_alias=True) if isinstance(value, BaseModel) else value
        if not isinstance(data, dict) or field not in data:
            raise ValueError(f"needs a {field!r} field")
        name = data[field]
        if name not in registry:
            raise ValueError(f"unknown choice {name!r} (known: {', '.join(registry.names())})")
        cls = config_of(registry.get(name))
        return value if type(value) is cls else cls.model_validate(data)

    return Annotated[SerializeAsAny[base], PlainValidator(resolve)]


TaskSection = registered(TASKS, "name", TaskConfig, lambda cls: cls.Config)
ModelSection = registered(MODELS, "name", ModelConfig, lambda cls: cls.Config)
ClampSection = registered(CLAMPS, "kind", Clamp, lambda cls: cls)


class ExperimentConfig(StrictModel):
    """Everything that defines a run; validated as a whole before any work starts."""

    imports: list[str] = Field(
        default_factory=list,
        description="modules of user components imported before validation: dotted names, or .py files "
        "(relative to the config file; stored as absolute paths)",
    )
    name: Name = "experiment"
    seed: int = Field(0, ge=0)
    task: TaskSection
    model: ModelSection
    training: TrainingConfig = TrainingConfig()
    eval: EvalConfig = EvalConfig()
    checkpointing: CheckpointConfig = CheckpointConfig()
    clamps: list[ClampSection] = Field(default_factory=list)
    later_fields = ("imports",)

    @model_validator(mode="before")
    @classmethod
    def _import_user_components(cls, data: object) -> object:
        imports = data.get("imports") if isinstance(data, dict) else None
        if not imports:
            return data
        if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
            raise ValueError("imports: give a list of module names or .py files")
        resolved = [str(Path(i).resolve()) if i.endswith(".py") else i for i in imports]
        for spec in resolved:
            import_user_module(spec)
        return {**data, "imports": resolved}

    @model_validator(mode="after")
    def _parts_fit_together(self) -> "ExperimentConfig":
        task_cls = TASKS.get(self.task.name)
        io = task_cls.io(self.task)
        try:
            self.model.check_io(io)
        except ValueError as e:
            raise ValueError(f"model: {e}") from None
        if self.model.drops_out and self.training.cuda_graphs:
            raise ValueError(
                "training.cuda_graphs: a model with dropout reseeds its masks every step, which replayed "
                "graphs do not; set cuda_graphs false"
            )
        model = build_model(self, device="meta")
        for i, clamp in enumerate(self.clamps):
            try:
                clamp.check(model)
                if clamp.steps.start >= (end := total_steps(self)):
                    raise ValueError(
                        f"steps.from ({clamp.steps.start:,}) is not before the run's end (step {end:,}): "
                        "the clamp would never act"
                    )
                if clamp.requires_layout and clamp.requires_layout != task_cls.layout:
                    raise ValueError(f"{clamp.kind} needs a task in the {clamp.requires_layout} layout")
                if not clamp.traceable and self.training.compile == "on":
                    raise ValueError(
                        f"a {clamp.kind} clamp runs outside any compiled graph, and a compiled "
                        "training step is one graph: set training.compile to auto or off"
                    )
            except ValueError as e:
                raise ValueError(f"clamps.{i}: {e}") from None
        splits = task_cls.all_split_names(self.task)
        if task_cls.key_metric[2] not in ("mean", "max", "min"):
            raise ValueError(
                f"task: {self.task.name}'s key_metric {task_cls.key_metric} must end in a summary over "
                "heads: mean, max or min"
            )
        for split in self.eval.splits or []:
            if split not in splits:
                raise ValueError(f"eval.splits: task has no split {split!r} (it has {splits})")
        for i, metric in enumerate(self.eval.metrics or []):
            if metric in self.eval.metrics[:i]:
                raise ValueError(f"eval.metrics: {metric!r} is listed twice")
            if metric not in METRICS:
                raise ValueError(f"eval.metrics: unknown metric {metric!r} (known: {METRICS.names()})")
            try:
                METRICS.get(metric).check(model, task_cls, self.task)
            except ValueError as e:
                raise ValueError(f"eval.metrics: {metric} {e}") from None
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)

    def hash(self) -> str:
        """Fingerprint of everything that determines the run's numbers (device, threads,
        compilation and CUDA graphs excluded: they change results only within rounding, but for a
        model with dropout, whose compiled steps draw other masks than eager ones)."""
        data = self.model_dump(mode="json", by_alias=True)
        for key in ("device", "threads", "log_every", "compile", "cuda_graphs"):
            del data["training"][key]
        drop_later_defaults(self, data)
        if data["model"]["name"] == "linear_self_attention" and data["model"]["init"] == "normal":
            del data["model"]["init"], data["model"]["init_scale"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def ensemble_key(config: ExperimentConfig) -> str:
    """Configs with equal keys can train as one ensemble: they may differ only in name, seed,
    clamps, learning rate and task fields that leave the model's inputs and outputs alone (and in
    seed not even there when the model reads task constants, which depend on the seed)."""
    data = config.model_dump(mode="json", by_alias=True)
    del data["name"], data["seed"], data["clamps"], data["training"]["optimizer"]["lr"]
    task_cls = TASKS.get(config.task.name)
    data["task"] = {"name": config.task.name, "io": repr(task_cls.io(config.task))}
    if MODELS.get(config.model.name).constants:
        data["task"]["seed"] = config.seed
    return json.dumps(data, sort_keys=True)


def _differing(a: object, b: object, at: str = "") -> str:
    """The first field (dotted) where two nested dicts of config values differ, the task's and the
    model's before the others (members of two tasks differ in their settings' defaults too)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=lambda k: (k not in ("task", "model"), k != "name", k)):
            if a.get(key) != b.get(key):
                return _differing(a.get(key), b.get(key), f"{at}.{key}" if at else key)
    return at


def check_ensemble(configs: list[ExperimentConfig]) -> None:
    """ConfigError unless the configs can train as one ensemble (see ensemble_key)."""
    if problem := ensemble_problem(configs):
        reason, advice = problem
        raise ConfigError(f"{reason}{advice}")


def ensemble_problem(configs: list[ExperimentConfig]) -> tuple[str, str] | None:
    """Why the configs cannot train as one ensemble, and the advice that follows it (None if they can)."""
    keys = [json.loads(ensemble_key(c)) for c in configs]
    if other := next((k for k in keys[1:] if k != keys[0]), None):
        field = _differing(keys[0], other)
        return (
            f"ensemble members differ in {field.replace('task.io', 'the task inputs or outputs')}",
            "; they may differ only in seed, clamps, learning rate and task fields that keep the "
            "model's inputs and outputs",
        )
    first = configs[0]
    refusal = ensemble_refusal(first)
    return (refusal, ": train the members as separate runs") if len(configs) > 1 and refusal else None


def ensemble_refusal(config: ExperimentConfig) -> str | None:
    """Why members of this config's model cannot train as one vmapped ensemble, or None."""
    if config.model.drops_out:
        return (
            "models with dropout do not train as one ensemble (vmapped members cannot draw their own masks)"
        )
    return MODELS.get(config.model.name).ensemble_refusal(config.model)


def ensemble_hash(configs: list[ExperimentConfig]) -> str:
    """Fingerprint of an ensemble's member configs (a single config's own hash for one member)."""
    if len(configs) == 1:
        return configs[0].hash()
    return hashlib.sha256("".join(c.hash() for c in configs).encode()).hexdigest()[:16]


def total_steps(config: ExperimentConfig) -> int:
    """The number of optimiser steps a config trains for, whatever unit its length is given in."""
    n_ctx = TASKS.get(config.task.name).io(config.task).n_ctx
    return config.training.length.to_steps(config.training.batch_size, n_ctx)


def config_notes(config: ExperimentConfig) -> list[str]:
    """What a valid config does that its author may not expect: settings its choices leave unread,
    lengths rounded to whole steps, a warm-up the run never finishes (each a line)."""
    training, n_ctx = config.training, TASKS.get(config.task.name).io(config.task).n_ctx
    steps, batch, notes = total_steps(config), training.batch_size, []
    for name, duration in (
        ("training.length", training.length),
        ("eval.every", config.eval.every),
        ("checkpointing.every", config.checkpointing.every),
    ):
        if duration is None or duration.steps is not None:
            continue
        unit = "sequences" if duration.sequences is not None else "tokens"
        per_step = batch if unit == "sequences" else batch * n_ctx
        asked = getattr(duration, unit)
        if asked % per_step:
            whole = duration.to_steps(batch, n_ctx)
            notes.append(
                f"{name}: {asked:,} {unit} is {whole:,} whole steps of {per_step:,} {unit}, "
                f"{whole * per_step:,} {unit}"
            )
    schedule, optimizer = training.schedule, training.optimizer
    if schedule.name != "constant" and schedule.warmup_steps >= steps:
        notes.append(
            f"training.schedule: the warm-up ({schedule.warmup_steps:,} steps) is not shorter than the run "
            f"({steps:,} steps): the learning rate never reaches {optimizer.lr:g}"
        )
    if schedule.name != "constant" and schedule.warmup_steps and (schedule.warmup_start or 0) > optimizer.lr:
        notes.append(
            f"training.schedule.warmup_start ({schedule.warmup_start:g}) is above the learning rate "
            f"({optimizer.lr:g}): the warm-up descends to it"
        )
    unread = {
        "training.schedule.warmup_steps": schedule.name == "constant" and schedule.warmup_steps,
        "training.schedule.min_lr_ratio": schedule.name != "cosine" and schedule.min_lr_ratio,
        "training.schedule.warmup_start": (schedule.name == "constant" or not schedule.warmup_steps)
        and schedule.warmup_start is not None,
        "training.schedule.decay_over": schedule.name != "cosine" and schedule.decay_over != "after_warmup",
        "training.optimizer.momentum": optimizer.name != "sgd" and optimizer.momentum,
        **{  # Adam's alone
            f"training.optimizer.{name}": optimizer.name == "sgd"
            and getattr(optimizer, name) != type(optimizer).model_fields[name].default
            for name in ("betas", "eps")
        },
    }
    notes += [
        f"{field} is set but unread by the {field.split('.')[1]} chosen"
        for field, set_ in unread.items()
        if set_
    ]
    if training.cuda_graphs:
        notes += _eager_graphs(config, steps)
    return notes


def _eager_graphs(config: ExperimentConfig, steps: int) -> list[str]:
    """Why training.cuda_graphs, set, replays no graphs in a run of this config alone (a line, or none)."""
    training = config.training
    if torch.device(training.device).type != "cuda":
        return ["training.cuda_graphs is set but unread on a CPU: the graphs replay on a GPU"]
    eager = sorted({clamp.kind for clamp in config.clamps if not clamp.traceable})
    if eager:  # as the trainer decides: such a clamp's run never compiles its step
        kinds = ", ".join(eager)
        return [f"training.cuda_graphs: a {kinds} clamp's run trains eager, so it replays no graphs"]
    if training.compile == "auto" and steps < AUTO_MEMBER_STEPS:
        return [
            f"training.cuda_graphs: under compile auto a run of {steps:,} steps compiles, and replays "
            f"graphs, only packed into an ensemble of {AUTO_MEMBER_STEPS:,} member-steps or more; "
            "alone it trains eager (set training.compile: on)"
        ]
    return []


def build_task(config: ExperimentConfig, seed: int | None = None, device: str = "cpu") -> Task:
    """The task of a config, seeded by the run seed unless another seed is given, and told the
    run's length and batch size (Task.plan: a repeated-data bank is drawn then)."""
    task = TASKS.get(config.task.name)(config.task, config.seed if seed is None else seed, device)
    batch = config.training.batch_size
    task.plan(total_steps(config), batch)
    return task


def build_model(
    config: ExperimentConfig, device: str | torch.device = "cpu", task: Task | None = None
) -> Model:
    """A freshly initialised model of a config (weights are set by the trainer from the seed).

    A model that needs task constants gets them from `task` (built from the config if not given);
    on the meta device, used to validate configs, they are left out.
    """
    io = TASKS.get(config.task.name).io(config.task)
    cls = MODELS.get(config.model.name)
    # the initial draws leave the caller's generator alone: a model built inside a training step (a
    # graft's donor) must not move that step's dropout masks
    with forked_generators(device), torch.device(device):
        model = cls(config.model, io).eval()  # the trainer switches it to training for its steps
    if cls.constants and str(device) != "meta":
        constants = (task or build_task(config, device=str(device))).model_constants()
        model.set_constants({k: v.to(device) for k, v in constants.items()})
    return model


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    """'a.b=value' strings -> (path, YAML-parsed value) pairs."""
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"bad override {item!r}: expected key.path=value")
        try:
            value = load_yaml(text)
        except yaml.YAMLError:
            raise ConfigError(f"bad override {item!r}: value is not valid YAML") from None
        parsed.append((key.split("."), value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each key.path=value in a nested dict/list structure (list items by index)."""
    for path, value in parse_overrides(overrides):
        node: Any = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"bad override {'.'.join(path)}: no list item {part!r}")
                index: Any = int(part)
            elif isinstance(node, dict):
                index = part
                if not last and part not in node:
                    node[part] = {}
                elif not last and not isinstance(node[part], dict | list):
                    raise ConfigError(f"bad override {'.'.join(path)}: {part!r} is a value, not a section")
            else:
                raise ConfigError(f"bad override {'.'.join(path)}: {part!r} is not a section")
            if last:
                node[index] = value
            else:
                node = node[index]
    return data


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or the name of a config bundled with icl-lab (e.g. 'induction')."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        raise ConfigError(f"config path is a directory, not a YAML file: {path}")
    if candidate.exists():
        raise ConfigError(f"config path is not a regular file: {path}")
    bare = candidate.suffix in ("", ".yaml") and candidate.parent == Path()
    bundled = BUNDLED_CONFIGS / f"{candidate.stem}.yaml"
    if bare and bundled.is_file():
        return bundled
    if bare:
        names = ", ".join(sorted(p.stem for p in BUNDLED_CONFIGS.glob("*.yaml")))
        raise ConfigError(f"config file not found: {path} (nor a bundled config: {names})")
    raise ConfigError(f"config file not found: {path}")


def validate_config(data: object, stored: bool = False) -> ExperimentConfig:
    """A validated ExperimentConfig, or ConfigError with one line naming the field; `stored`: a
    stored run's, not checked against this machine (config.on_this_machine)."""
    return validated(ExperimentConfig, data, stored=stored)


def read_yaml(path: Path) -> Any:
    """A YAML file's contents; ConfigError for bad YAML, a key given twice, or an unreadable file."""
    try:
        return load_yaml(path.read_text())
    except yaml.constructor.ConstructorError as e:
        raise ConfigError(f"config file {path}: {e.problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML config (or a bundled config's name), apply overrides, validate. Its `imports`
    that are .py files are found relative to the config file."""
    path = resolve_config_path(path)
    raw = read_yaml(path) or {}
    if isinstance(raw, dict) and "base" in raw:  # no experiment config has one
        raise ConfigError(f"{path} is a sweep (it names a base config): run it with `icl-lab sweep {path}`")
    data = apply_overrides(raw, list(overrides))
    if isinstance(data, dict) and isinstance(data.get("imports"), list):
        data["imports"] = [
            str(path.parent / i) if isinstance(i, str) and i.endswith(".py") else i for i in data["imports"]
        ]
    return validate_config(data)
