"""What every run directory has, whatever it trains (a model, an SAE): a manifest whose status says
whether it is running, complete, interrupted, failed or diverged, a training lock, a metrics table and
checkpoints. Only a run that finished training is ever marked complete.
"""

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from icl_lab import __version__
from icl_lab.errors import CheckpointError, IclLabError, RunStoreError
from icl_lab.files import atomic_write_text, storage_error
from icl_lab.store.checkpoints import Checkpoint, checkpoint_paths, list_steps, load_checkpoint
from icl_lab.store.metrics_table import read_metrics

LOCK = ".lock"  # held (flock) by the process training the run
MANIFEST_TYPES: dict[str, type | tuple[type, ...]] = {
    "created": str,
    "status": str,
    "total_steps": int,
    "members": int,
    "source_step": (int, type(None)),
    "source_hash": str,
    "d_in": int,
    "n_ctx": int,
    "metrics_rows": int,
}
"""fields whose type a manifest's reader checks (where present): a damaged value is refused on opening"""


def evaluation_steps(every: int, upto: int, total: int) -> set[int]:
    """The steps a run evaluated at once trained to step `upto` of `total`: 0, every `every`-th,
    and the last (what its metrics table must hold)."""
    return {0, *range(every, upto + 1, every)} | ({upto} if upto == total else set())


class RunDirectory:
    """Handle on a run directory: manifest, lock, metrics table and checkpoints. Subclasses name
    their manifest FORMAT and what their config is."""

    FORMAT: ClassVar[str]
    REQUIRED: ClassVar[tuple[str, ...]] = ("created",)  # manifest fields every run of the kind has

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path, self.manifest = path, manifest
        self._lock: int | None = None

    @property
    def config_hash(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def _new_manifest(cls, run_id: str, config_hash: str, **fields: Any) -> dict[str, Any]:
        import torch  # the version it trained with; imported here to keep this module light

        return {
            "format": cls.FORMAT,
            "id": run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config_hash": config_hash,
            "icl_lab_version": __version__,
            "torch_version": torch.__version__,
            **fields,
        }

    @staticmethod
    def new_id(name: str) -> str:
        """A fresh run id: the config's name, the time and a random suffix."""
        return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"

    @staticmethod
    def _staging(runs: Path, run_id: str, files: dict[str, str]) -> tuple[Path, Path]:
        """(final path, a hidden staging directory holding files) for a new run."""
        path = runs / run_id
        if path.exists():
            damaged = not (path / "manifest.json").is_file()
            why = " without a manifest (delete it to train it again)" if damaged else ""
            raise RunStoreError(f"run directory already exists{why}: {path}")
        staging = runs / f".{run_id}.{secrets.token_hex(4)}.staging"
        if runs.exists() and not runs.is_dir():
            raise RunStoreError(f"the runs directory is a file, not a directory: {runs}")
        try:
            runs.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
        except OSError as e:
            raise storage_error("create a run directory in", runs, e) from None
        try:
            for name, text in files.items():
                atomic_write_text(staging / name, text)
        except IclLabError:  # a full disk: nothing half-made is left behind
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return path, staging

    def _commit(self, path: Path) -> None:
        """Mark the staged run running and rename it into place, holding its lock, so a process
        killed meanwhile leaves no half-made run where a rerun would look."""
        staging = self.path
        try:
            self.acquire()  # held (the rename keeps the lock file) until training ends
            self.update_manifest(status="running")
            staging.rename(path)
        except (OSError, IclLabError) as e:  # a full disk, or another process made this id meanwhile
            self.release()
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(e, IclLabError):
                raise
            raise RunStoreError(f"run directory already exists: {path}") from None
        self.path = path

    @classmethod
    def read_manifest(cls, path: Path) -> dict[str, Any]:
        """The manifest of a run directory of this kind; RunStoreError if it is not one."""
        if not (path / "manifest.json").is_file():
            raise RunStoreError(f"not a run directory (no manifest.json): {path}")
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except ValueError:  # not JSON, or not UTF-8 text
            raise RunStoreError(f"run manifest is not valid JSON: {path / 'manifest.json'}") from None
        if not isinstance(manifest, dict):
            raise RunStoreError(f"run manifest is not a JSON object: {path / 'manifest.json'}")
        if manifest.get("format") != cls.FORMAT:
            found = manifest.get("format")
            raise RunStoreError(f"{path} is not an {cls.FORMAT} directory (its manifest says {found!r})")
        if missing := [field for field in cls.REQUIRED if field not in manifest]:
            lacks = ", ".join(missing)
            raise RunStoreError(f"run manifest is damaged (no {lacks}): {path / 'manifest.json'}")
        for field, kinds in MANIFEST_TYPES.items():
            value = manifest.get(field)
            wrong = isinstance(value, bool) or not isinstance(value, kinds)
            if field in manifest and (wrong or (field == "members" and value < 1)):
                raise RunStoreError(f"run manifest is damaged ({field}: {value!r}): {path / 'manifest.json'}")
        if not (path / "config.yaml").is_file():
            raise RunStoreError(f"run has no config.yaml: {path}")
        return manifest

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        """complete, failed, diverged, interrupted, or running. A run marked running on this host is
        running only while some process holds its lock (the lock dies with the process, so a killed
        run or a reused pid never looks alive); one marked running on another host cannot be checked
        from here and stays running (`resume --force` overrides)."""
        status = self.manifest.get("status", "unknown")
        if status != "running" or self._lock is not None:
            return status
        if self.manifest.get("host", socket.gethostname()) != socket.gethostname():
            return "running"
        return "running" if self._locked_elsewhere() else "interrupted"

    def update_manifest(self, **fields: Any) -> None:
        if fields.get("status") == "running":
            fields |= {"pid": os.getpid(), "host": socket.gethostname()}
        if fields.get("status") == "complete":  # an interruption before is history now
            self.manifest.pop("interrupted_at", None)
        self.manifest.update(fields)
        atomic_write_text(self.path / "manifest.json", json.dumps(self.manifest, indent=1))

    def record_failure(self, error: Exception) -> None:
        """Mark the run failed with the error that stopped it (see record)."""
        self.record(status="failed", error=f"{type(error).__name__}: {error}")

    def record(self, **fields: Any) -> None:
        """Mark the manifest, if the disk still lets us (a full or read-only disk may be why we stop)."""
        with contextlib.suppress(IclLabError):
            self.update_manifest(**fields)

    # the training lock ---------------------------------------------------------------------

    def acquire(self) -> None:
        """Hold the run's lock for as long as this process trains it; RunStoreError if another
        process on this machine holds it."""
        if self._lock is not None:
            return
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise storage_error("open the lock file of", self.path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunStoreError(
                f"run {self.id} is being trained by another process (pid {self.manifest.get('pid')})"
            ) from None
        self._lock = fd

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    def _locked_elsewhere(self) -> bool:
        try:
            fd = os.open(self.path / LOCK, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # metrics and checkpoints ---------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.parquet"

    @property
    def metrics(self) -> pa.Table:
        """All metric rows: step, sequences, tokens, wall_s, member, split, metric, head, value.
        Read once per change of the file."""
        stamp = self.metrics_path.stat().st_mtime_ns if self.metrics_path.exists() else None
        if getattr(self, "_metrics_stamp", -1) != stamp:
            self._metrics, self._metrics_stamp = read_metrics(self.metrics_path), stamp
        return self._metrics

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def checkpoint_steps(self) -> list[int]:
        return list_steps(self.checkpoint_dir)

    def load_checkpoint(self, step: int | None = None) -> Checkpoint:
        """The checkpoint at `step` (default: the latest), verified against this run's config."""
        steps = self.checkpoint_steps
        if not steps:
            raise CheckpointError(f"run {self.id} has no checkpoints")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise CheckpointError(f"run {self.id} has no checkpoint at step {step} (it has {steps})")
        return load_checkpoint(checkpoint_paths(self.checkpoint_dir, step)[1], self.config_hash)

    def evaluation_schedule(self) -> tuple[int, int]:  # pragma: no cover - interface
        """(members, steps between evaluations): whose evaluations the metrics table holds, and when."""
        raise NotImplementedError

    def check_whole(self) -> None:
        """RunStoreError if the run is marked complete but its final checkpoint (tensors or sidecar)
        or any evaluation of a member is gone, or its metrics table has other rows than training
        wrote (a damaged copy): what it reports would be an earlier state's, or its curves would
        have holes."""
        if self.status != "complete":
            return
        last = self.manifest.get("total_steps")
        if last is None:
            raise RunStoreError(
                f"run {self.id} is marked complete, but its manifest lacks total_steps: the file is damaged"
            )
        if not all(p.is_file() for p in checkpoint_paths(self.checkpoint_dir, last)):
            raise RunStoreError(
                f"run {self.id} is marked complete, but its final checkpoint (step {last:,}) is gone"
            )
        members, every = self.evaluation_schedule()
        table = self.metrics
        for member in range(members):
            have = set(table.filter(pc.equal(table["member"], member))["step"].to_pylist())
            missing = sorted(evaluation_steps(every, last, last) - have)
            if missing:
                shown = ", ".join(f"{step:,}" for step in missing[:5]) + (" ..." if len(missing) > 5 else "")
                lack = f"lack its evaluations at steps {shown}" if have else "are gone"
                raise RunStoreError(
                    f"run {self.id} is marked complete, but member {member}'s metrics {lack}: its "
                    f"{self.metrics_path.name} is damaged; train it again"
                )
        written = self.manifest.get("metrics_rows")  # absent in runs made before it was recorded
        if written is not None and table.num_rows != written:
            raise RunStoreError(
                f"run {self.id} is marked complete, but its {self.metrics_path.name} has "
                f"{table.num_rows:,} rows where training wrote {written:,}: it is damaged; train it again"
            )

    def check_config(self) -> None:
        """RunStoreError if the run's config files were edited since it started (the manifest's
        config hash): each of its checkpoints would then be refused in turn."""
        recorded = self.manifest.get("config_hash")
        if recorded and recorded != self.config_hash:
            name = "members.yaml" if (self.path / "members.yaml").is_file() else "config.yaml"
            raise RunStoreError(
                f"run {self.id}: its {name} was changed since the run started (hash {self.config_hash}, "
                f"the run's {recorded}): restore it to resume, or train the changed config as a new run"
            )

    def resume_point(self, expected_history: Callable[[int], set[int]], members: int = 1) -> int | None:
        """The latest checkpoint from which the run can continue with its history whole: the
        metrics table has every member's evaluations expected_history(step) up to it (None: start
        afresh, only if there are no checkpoints). RunStoreError if checkpoints exist but none has
        its history."""
        steps = self.checkpoint_steps
        if not steps:
            return None
        table = self.metrics
        have = [set(table.filter(pc.equal(table["member"], m))["step"].to_pylist()) for m in range(members)]
        for step in reversed(steps):
            if all(expected_history(step) <= seen for seen in have):
                return step
        raise RunStoreError(
            f"run {self.id} has checkpoints up to step {steps[-1]} but its metrics table "
            f"({self.metrics_path.name}) lacks evaluations before every one of them: resuming would "
            "lose history; restore the table, or train the config afresh"
        )

    def drop_checkpoints_after(self, step: int) -> None:
        """Remove checkpoints later than `step` (resuming from it rewrites them), sidecar first, and
        the temporary files of writes a kill cut short (the caller holds the run's lock: no write of
        another process is under way)."""
        for tmp in self.checkpoint_dir.glob(".*.tmp"):  # files.atomic_write's names
            tmp.unlink(missing_ok=True)
        for later in self.checkpoint_steps:
            if later > step:
                for path in checkpoint_paths(self.checkpoint_dir, later)[::-1]:
                    path.unlink(missing_ok=True)
