"""The config of an SAE training run: which activations (a model run's checkpoint, member and
layer, on its own task or with task fields changed, e.g. another corpus), the buffer, the
architecture, the optimiser, evaluation and checkpointing."""

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from icl_lab.config import DeviceName, Name, StrictModel, drop_later_defaults, validated
from icl_lab.errors import ConfigError
from icl_lab.experiment import apply_overrides, read_yaml, registered
from icl_lab.sae.base import SAES, SAEConfig
from icl_lab.sae.fit import FitSettings

SAESection = registered(SAES, "architecture", SAEConfig, lambda cls: cls.Config)


class SourceConfig(StrictModel):
    """Where the activations come from: blocks.{layer}.attn.hook_z of a model run's checkpoint."""

    run: str = Field(description="the model run's directory")
    step: NonNegativeInt | None = Field(None, description="its checkpoint (default: the latest)")
    member: NonNegativeInt = 0
    layer: NonNegativeInt = 0
    task: dict[str, Any] = Field(
        default_factory=dict,
        description="task fields changed for the sequences the SAE sees (e.g. corpus: shakespeare); "
        "the model's inputs must stay the same",
    )


class BufferConfig(StrictModel):
    """The shuffled activation buffer: its size in tokens (memory: tokens x d_in x 4 bytes), the
    sequences per forward pass that fill it, and the input normalisation."""

    tokens: PositiveInt = 262_144
    chunk: PositiveInt = 64
    normalisation: Literal["none", "expected_norm"] = Field(
        "none", description="expected_norm: scale inputs so their mean norm is sqrt(d_in)"
    )


class SAEEvalConfig(StrictModel):
    """Evaluation every `every` steps on held-out sequences: quality, CE recovered and KL."""

    every: PositiveInt = 500
    sequences: PositiveInt = 64


class SAETrainSettings(FitSettings):
    threads: PositiveInt = Field(1, description="torch threads (not part of the config hash)")
    device: DeviceName = Field(
        "cpu",
        description="cpu, cuda or cuda:N: where the source model, the activation buffer and the SAE "
        "live (not part of the config hash)",
    )
    log_every: PositiveInt = Field(50, description="steps between progress updates")


class SAECheckpointConfig(StrictModel):
    every: PositiveInt | None = Field(
        1000, description="steps between checkpoints (None: step 0 and the last only)"
    )


class SAERunConfig(StrictModel):
    """Everything that defines an SAE training run."""

    name: Name = "sae"
    seed: NonNegativeInt = 0
    source: SourceConfig
    buffer: BufferConfig = BufferConfig()
    sae: SAESection
    training: SAETrainSettings
    eval: SAEEvalConfig = SAEEvalConfig()
    checkpointing: SAECheckpointConfig = SAECheckpointConfig()

    @model_validator(mode="after")
    def _buffer_holds_a_batch(self) -> "SAERunConfig":
        # batches are drawn from the buffer with replacement: a smaller buffer repeats activations in
        # every batch, and the SAE fits those few alone
        if self.buffer.tokens < self.training.batch_size:
            raise ValueError(
                f"buffer.tokens ({self.buffer.tokens:,}) is fewer than training.batch_size "
                f"({self.training.batch_size:,}): every batch would repeat the same activations"
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def hash(self) -> str:
        """Fingerprint of everything that determines the SAE's numbers (threads, device and logging
        excluded)."""
        data = self.model_dump(mode="json")
        del data["training"]["threads"], data["training"]["device"], data["training"]["log_every"]
        drop_later_defaults(self, data)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def validate_sae_config(data: object, stored: bool = False) -> SAERunConfig:
    """A validated SAERunConfig, or ConfigError with one line naming the field; `stored`: a stored
    run's, not checked against this machine (config.on_this_machine)."""
    return validated(SAERunConfig, data, "the SAE config", stored)


def load_sae_config(path: str | Path, overrides: list[str] = ()) -> SAERunConfig:
    """Read an SAE config YAML, apply key.path=value overrides, validate; source.run is found
    relative to the current directory and stored absolute, so the SAE run reopens from anywhere."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"SAE config file not found: {path}")
    data = apply_overrides(read_yaml(path) or {}, list(overrides))
    source = data.get("source") if isinstance(data, dict) else None
    if isinstance(source, dict) and isinstance(source.get("run"), str) and Path(source["run"]).exists():
        source["run"] = str(Path(source["run"]).resolve())
    return validate_sae_config(data)
