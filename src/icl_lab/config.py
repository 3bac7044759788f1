"""Building blocks of experiment configs: strict pydantic bases, durations in steps/sequences/tokens."""

import math
from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

M = TypeVar("M", bound=BaseModel)


def on_this_machine(info: ValidationInfo) -> bool:
    """Whether a validator checks a field against this machine (its GPUs, its compiler): not while
    a stored run's config is read (`validated(..., stored=True)`), so that a run trained on a GPU
    opens on a laptop; training it checks again (`check_trainable_here`)."""
    return not (info.context or {}).get("stored")


def _device_here(device: str, info: ValidationInfo) -> str:
    if on_this_machine(info):
        check_device(device)
    return device


DeviceName = Annotated[str, AfterValidator(_device_here)]
"""A config's device (cpu, cuda, cuda:N), checked against this machine unless the config is stored."""

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
"""A run's or sweep's name, part of its directory's name: letters, digits, '_', '.' and '-', starting
with a letter or digit (so never '.' or '..', which would name a directory outside the runs directory)."""


class StrictModel(BaseModel):
    """A config section: unknown fields are errors, every field is validated on assignment."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, populate_by_name=True, strict=True, allow_inf_nan=False
    )
    later_fields: ClassVar[tuple[str, ...]] = ()
    """fields added after runs were first stored: in the config hash only when set off their default,
    so older runs keep their hashes"""


def drop_later_defaults(section: BaseModel, data: dict) -> None:
    """Delete from a section's dump, and its subsections', the `later_fields` left at their
    defaults: fields added since runs were first stored count in the hash only when set."""
    later = getattr(section, "later_fields", ())
    for key, field in type(section).model_fields.items():
        value, name = getattr(section, key), field.alias or key
        if key in later and value == field.get_default(call_default_factory=True):
            del data[name]
        elif isinstance(value, BaseModel):
            drop_later_defaults(value, data[name])


class Duration(StrictModel):
    """A length of training given in exactly one unit: optimiser steps, sequences or tokens."""

    steps: PositiveInt | None = None
    sequences: PositiveInt | None = None
    tokens: PositiveInt | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_int_is_steps(cls, value: object) -> object:
        return {"steps": value} if isinstance(value, int) else value

    @model_validator(mode="after")
    def _exactly_one_unit(self) -> "Duration":
        given = [u for u in ("steps", "sequences", "tokens") if getattr(self, u) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of steps, sequences, tokens (to change the unit with --set, "
                "set the whole field, e.g. training.length={steps: 500})"
            )
        return self

    def to_steps(self, batch_size: int, tokens_per_sequence: int) -> int:
        """Whole optimiser steps covering this duration (rounded up)."""
        if self.steps is not None:
            return self.steps
        if self.sequences is not None:
            return math.ceil(self.sequences / batch_size)
        return math.ceil(self.tokens / (batch_size * tokens_per_sequence))


class StepWindow(StrictModel):
    """Steps [from, until) in which something is active; until=None means to the end."""

    start: int = Field(0, ge=0, alias="from")
    until: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "StepWindow":
        if self.until is not None and self.until <= self.start:
            raise ValueError(f"until ({self.until}) must be greater than from ({self.start})")
        return self

    def contains(self, step: int) -> bool:
        return self.start <= step and (self.until is None or step < self.until)


Beta = Annotated[float, Field(ge=0, lt=1)]
"""an Adam beta: a decay rate in [0, 1)"""


class OptimizerConfig(StrictModel):
    """Optimiser and its hyper-parameters."""

    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), strict=False)  # YAML gives a list
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)


class ScheduleConfig(StrictModel):
    """Learning-rate schedule: constant, linear warm-up then constant, or warm-up then cosine decay."""

    name: Literal["constant", "warmup", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    warmup_start: float | None = Field(
        None,
        ge=0,
        description="the warm-up's first learning rate, rising linearly by (lr - warmup_start) / "
        "warmup_steps a step (timm's warmup_lr_init); unset: lr / warmup_steps, rising to lr at the "
        "warm-up's last step",
    )
    decay_over: Literal["after_warmup", "whole_run"] = Field(
        "after_warmup",
        description="cosine: decay from the warm-up's end to min_lr_ratio x lr at the last step, or "
        "over the whole run from step 0 with the warm-up laid over its start, reaching the minimum one "
        "step after the last (timm's CosineLRScheduler, warmup_prefix false)",
    )
    later_fields = ("warmup_start", "decay_over")  # 2026-12-05

    @model_validator(mode="after")
    def _warmup_needs_steps(self) -> "ScheduleConfig":
        if self.name == "warmup" and self.warmup_steps == 0:
            raise ValueError("schedule 'warmup' needs warmup_steps > 0")
        return self


class TrainingConfig(StrictModel):
    """How long and how to optimise."""

    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    batch_size: PositiveInt = 32
    length: Duration = Duration(steps=1000)
    grad_clip: float | None = Field(None, gt=0)
    device: DeviceName = Field("cpu", description="cpu, cuda or cuda:N")
    threads: PositiveInt = 1
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the training step, and models' hot loops (Mamba's scan) on their "
        "own; auto: each when the run is long enough to repay its compile time (training/compiled.py); "
        "off: nothing compiles",
    )
    cuda_graphs: bool = Field(
        False,
        description="on a GPU, replay the compiled step as CUDA graphs (torch.compile's "
        "reduce-overhead mode: one launch for a step's many tiny kernels); needs compile auto or on "
        "and acts only when the step compiles (under auto: a run long enough to repay compiling); "
        "refused for a model with dropout; no effect on a CPU; off by default until a resume with "
        "graphs is checked on a GPU (2.29x a plain PyTorch loop on an H200: docs/performance.md)",
    )
    log_every: PositiveInt = Field(10, description="steps between progress-bar updates")

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: object) -> object:
        # YAML 1.1 reads a bare on / off as a boolean
        return ("on" if value else "off") if isinstance(value, bool) else value

    @field_validator("compile")
    @classmethod
    def _compiler_present(cls, value: str, info: ValidationInfo) -> str:
        from icl_lab.training.compiled import compiler_missing

        here = on_this_machine(info) and value == "on" and "device" in info.data
        missing = compiler_missing(info.data["device"]) if here else None
        if missing:
            raise ValueError(f"on, but {missing}; set training.compile: off")
        return value

    @model_validator(mode="after")
    def _graphs_need_compiling(self) -> "TrainingConfig":
        if self.cuda_graphs and self.compile == "off":
            raise ValueError("cuda_graphs needs compile auto or on: the graphs replay the compiled step")
        return self


def check_device(device: str) -> None:
    """ValueError unless `device` names a device of this machine: cpu, or cuda[:N] with a GPU."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} (use cpu, cuda or cuda:N)")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{device!r} requested but CUDA is not available on this machine")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"{device!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")


class EvalConfig(StrictModel):
    """When and on what to evaluate; metrics go to metrics.parquet."""

    every: Duration = Duration(steps=100)
    batch_size: PositiveInt = 256
    splits: list[str] | None = Field(None, min_length=1, description="null: every split of the task")
    metrics: list[str] | None = Field(
        None, min_length=1, description="null: the task's default metrics that apply to the model"
    )
    with_clamps: bool = True


class CheckpointConfig(StrictModel):
    """When to write checkpoints (always also at step 0 of a fresh run and at the end of training)."""

    every: Duration | None = None


class RepeatConfig(StrictModel):
    """A share of training sequences from a fixed bank, each seen `epochs` times over the run."""

    fraction: float = Field(ge=0, le=1, description="r: share of each batch's sequences from the bank")
    epochs: float | None = Field(None, gt=0, description="E: times each bank sequence is seen over the run")
    bank_size: int | None = Field(None, ge=1, description="K: bank sequences (instead of epochs)")

    @model_validator(mode="after")
    def _one_size(self) -> "RepeatConfig":
        if (self.epochs is None) == (self.bank_size is None):
            raise ValueError("give exactly one of epochs (E) and bank_size (K)")
        return self


class TaskConfig(StrictModel):
    """Base of every task's config; `name` selects the registered task; `repeat` draws a share of
    training batches from a fixed bank (tasks/repetition.py)."""

    name: str
    repeat: RepeatConfig | None = None
    later_fields = ("repeat",)


class ModelConfig(StrictModel):
    """Base of every model's config; `name` selects the registered model."""

    name: str

    def check_io(self, io: "ModelIO") -> None:  # noqa: F821 - ModelIO imports this module
        """Raise ValueError if this model cannot serve a task with these inputs and targets."""

    @property
    def drops_out(self) -> bool:
        """Whether training draws dropout masks: a field named *_dropout above 0 (the trainer then
        seeds them from the run seed and step, and such a model does not pack into ensembles)."""
        return any(name.endswith("_dropout") and value > 0 for name, value in self)


def format_validation_error(error: Exception) -> str:
    """One line naming the failing field, from a pydantic ValidationError."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return str(error)
    first = error.errors()[0]
    parts = [str(key) for key in first["loc"]]
    where = ".".join(parts)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "missing":
        message = "field required"
    elif "input" in first and first["type"] not in ("value_error", "assertion_error"):
        shown = repr(first["input"])
        message += f" (got {shown if len(shown) < 60 else shown[:57] + '...'})"
    return f"config error: {where}: {message}" if where else f"config error: {message}"


def validated(cls: type[M], data: object, what: str = "the config", stored: bool = False) -> M:
    """data validated as cls, or ConfigError with one line naming the failing field; `stored`: a
    stored run's config, whose device and compiler are not checked against this machine."""
    from pydantic import ValidationError

    from icl_lab.errors import ConfigError

    if not isinstance(data, dict):
        raise ConfigError(f"config error: {what} must be a mapping of sections")
    try:
        return cls.model_validate(data, context={"stored": stored})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def check_trainable_here(config: BaseModel, run_id: str) -> None:
    """ConfigError (one line) unless this machine can train a stored run's config: its device
    exists here and, with compile on, its compiler does."""
    from pydantic import ValidationError

    from icl_lab.errors import ConfigError

    try:
        type(config).model_validate(config.model_dump(mode="json", by_alias=True))
    except ValidationError as e:
        problem = format_validation_error(e).removeprefix("config error: ")
        raise ConfigError(
            f"run {run_id} cannot train on this machine: {problem} (resume --device chooses another)"
        ) from None
