"""Checkpoints: a safetensors file of tensors plus a JSON sidecar, verified on load.

The tensors file holds parameters (with the member axis first), optimiser state and RNG states;
the sidecar holds the step, units, config hash, the tensors file's SHA-256 and non-tensor state,
and the SHA-256 of its own other fields (`fields_sha256`; sidecars written before 2026-12-04 lack
it). The sidecar is renamed into place last, so a checkpoint without one never counts.
"""

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from icl_lab.errors import CheckpointError
from icl_lab.files import atomic_write_text, save_tensors, sha256_of

FORMAT = "icl-lab-checkpoint/1"
_NAME = re.compile(r"^step_(\d{9})\.json$")


class SidecarInfo(dict):
    """A sidecar's fields: one that is missing makes the sidecar damaged (CheckpointError naming it)."""

    def __init__(self, fields: dict[str, Any], path: Path) -> None:
        super().__init__(fields)
        self.path = path

    def __missing__(self, key: str) -> Any:
        raise CheckpointError(f"checkpoint sidecar {self.path} is damaged: it lacks {key!r}")


@dataclass
class Checkpoint:
    """Tensors and sidecar information of one checkpoint."""

    tensors: dict[str, Tensor]
    info: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.info["step"])

    def group(self, prefix: str) -> dict[str, Tensor]:
        """Tensors under 'prefix/', keyed by the rest of their name."""
        start = f"{prefix}/"
        return {k[len(start) :]: v for k, v in self.tensors.items() if k.startswith(start)}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_FIELD_CHECKS: dict[str, Callable[[Any], bool]] = {
    "step": _count,
    "members": _count,
    "loss_count": _count,
    "count": _count,
    "warmup_from": _count,
    "resamplings": _count,
    "seen": _count,
    "sum_names": lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
    "wall_s": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
    "param_groups": lambda v: isinstance(v, list) and all(isinstance(g, dict) for g in v),
}
"""what the sidecar fields a resume restores must be"""


def checkpoint_paths(directory: Path, step: int) -> tuple[Path, Path]:
    stem = f"step_{step:09d}"
    return directory / f"{stem}.safetensors", directory / f"{stem}.json"


def list_steps(directory: Path) -> list[int]:
    """Steps of the checkpoints whose sidecar is in place, ascending."""
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _NAME.match(p.name)))


def save_checkpoint(directory: Path, step: int, tensors: dict[str, Tensor], info: dict) -> None:
    """Write the tensors, then the sidecar naming their checksum; both atomically."""
    tensor_path, sidecar_path = checkpoint_paths(directory, step)
    save_tensors(
        tensor_path, {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, {"format": FORMAT}
    )
    sidecar = {
        "format": FORMAT,
        **info,
        "step": step,
        "file": tensor_path.name,
        "sha256": sha256_of(tensor_path),
    }
    sidecar["fields_sha256"] = fields_digest(json.loads(json.dumps(sidecar)))  # as it will be read
    atomic_write_text(sidecar_path, json.dumps(sidecar, indent=1))


def fields_digest(fields: dict[str, Any]) -> str:
    """SHA-256 of a sidecar's fields as canonical JSON (a damaged value, e.g. a changed loss count,
    would otherwise restore silently: the tensors' checksum does not cover the sidecar)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def load_checkpoint(sidecar_path: Path, config_hash: str | None = None) -> Checkpoint:
    """Read and verify a checkpoint; CheckpointError names what is wrong with it."""
    if not sidecar_path.is_file():
        raise CheckpointError(f"checkpoint sidecar not found: {sidecar_path}")
    try:
        info = json.loads(sidecar_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint sidecar {sidecar_path} is not valid JSON") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar_path} is not an icl-lab checkpoint sidecar")
    if info.get("file") != sidecar_path.with_suffix(".safetensors").name:
        raise CheckpointError(
            f"checkpoint sidecar {sidecar_path} names another tensors file: {info.get('file')!r}"
        )
    recorded, named = info.pop("fields_sha256", None), _NAME.match(sidecar_path.name)
    for wrong, what in (
        (recorded is not None and recorded != fields_digest(info), "their checksum"),
        (named and "step" in info and info["step"] != int(named.group(1)), "its file name's step"),
    ):
        if wrong:
            raise CheckpointError(
                f"checkpoint sidecar {sidecar_path} is damaged: its fields do not match {what}"
            )
    for key, fits in _FIELD_CHECKS.items():  # an older sidecar has no checksum of its fields
        if key in info and not fits(info[key]):
            raise CheckpointError(
                f"checkpoint sidecar {sidecar_path} is damaged: its {key!r} is {info[key]!r}"
            )
    tensor_path = sidecar_path.with_suffix(".safetensors")
    if not tensor_path.is_file():
        raise CheckpointError(f"checkpoint tensors file missing: {tensor_path}")
    if sha256_of(tensor_path) != info.get("sha256"):
        raise CheckpointError(
            f"checkpoint {tensor_path} is corrupt or truncated (checksum does not match its sidecar)"
        )
    if config_hash is not None and info.get("config_hash") != config_hash:
        raise CheckpointError(
            f"checkpoint {tensor_path} belongs to another config "
            f"(hash {info.get('config_hash')}, this run {config_hash})"
        )
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {tensor_path} cannot be read: {e}") from None
    return Checkpoint(tensors, SidecarInfo(info, sidecar_path))
