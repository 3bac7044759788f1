"""A model run's directory: runs/<id>/{config.yaml, manifest.json, metrics.parquet, checkpoints/}."""

import contextlib
import functools
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import yaml
from torch import Tensor

from icl_lab.errors import CheckpointError, ConfigError, IclLabError, RunStoreError
from icl_lab.evaluation import eval_batches
from icl_lab.experiment import (
    ExperimentConfig,
    build_model,
    build_task,
    ensemble_hash,
    read_yaml,
    validate_config,
)
from icl_lab.interventions import Clamp
from icl_lab.interventions.base import active_at
from icl_lab.models import Model
from icl_lab.registry import source_digests
from icl_lab.store.directory import RunDirectory
from icl_lab.store.train_state import TrainState
from icl_lab.tasks import TASKS, Batch, Task

MANIFEST_FORMAT = "icl-lab-run/1"
Unit = Literal["steps", "sequences", "tokens"]


def _unit(x: str) -> str:
    """The metrics-table column of a training unit."""
    if x not in ("steps", "sequences", "tokens"):
        raise ValueError(f"unknown unit {x!r}: use steps, sequences or tokens")
    return "step" if x == "steps" else x


class Run(RunDirectory):
    """Handle on a model run's directory: its config(s), metrics table and checkpoints.

    A run trains one config, or an ensemble of member configs (config.yaml holds member 0's,
    members.yaml all of them); metrics and checkpoints carry the member axis either way. A handle
    is on one member (`view`; 0 by default): `config` is that member's, and methods read it unless
    given another.
    """

    FORMAT = MANIFEST_FORMAT

    def __init__(
        self, path: Path, configs: list[ExperimentConfig], manifest: dict[str, Any], member: int = 0
    ) -> None:
        super().__init__(path, manifest)
        self.configs = configs
        self.member = member
        self.config = configs[member]
        self._eval_data: dict[tuple[int, str], tuple[Task, dict[str, Batch]]] = {}

    def view(self, member: int) -> "Run":
        """The same run as a handle on one member; RunStoreError if it has no such member."""
        self.member_config(member)
        return type(self)(self.path, self.configs, self.manifest, member)

    def _member(self, member: int | None) -> int:
        return self.member if member is None else member

    @classmethod
    def create(
        cls,
        configs: ExperimentConfig | list[ExperimentConfig],
        runs_dir: str | Path = "runs",
        run_id: str | None = None,
    ) -> "Run":
        """A new run directory for validated config(s), marked running; the id defaults to the
        first config's name and the time."""
        members = configs if isinstance(configs, list) else [configs]
        run_id = run_id or cls.new_id(members[0].name)
        files = {"config.yaml": members[0].to_yaml()}
        if len(members) > 1:
            data = [m.model_dump(mode="json", by_alias=True) for m in members]
            files["members.yaml"] = yaml.safe_dump(data, sort_keys=False)
        path, staging = cls._staging(Path(runs_dir), run_id, files)
        sources = source_digests(sorted({spec for m in members for spec in m.imports}))
        manifest = cls._new_manifest(
            run_id, ensemble_hash(members), members=len(members), **({"sources": sources} if sources else {})
        )
        run = cls(staging, members, manifest)
        run._commit(path)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """Open an existing run directory; RunStoreError if it is not one."""
        path = Path(path)
        manifest = cls.read_manifest(path)
        members = path / "members.yaml"
        if not members.is_file() and manifest.get("members", 1) > 1:
            raise RunStoreError(
                f"run {path}: its members.yaml is missing (the run has {manifest['members']} members; "
                "config.yaml holds member 0's only)"
            )
        source = members if members.is_file() else path / "config.yaml"
        try:
            data = read_yaml(source)
            entries = data if source == members else [data]
            if not isinstance(entries, list) or not all(isinstance(d, dict) for d in entries):
                raise ConfigError(
                    "it is not a list of member configs" if source == members else "not a mapping"
                )
        except ConfigError as e:
            raise RunStoreError(f"run {path}: its {source.name} cannot be read ({e})") from None
        if "members" in manifest and len(entries) != manifest["members"]:
            raise RunStoreError(
                f"run {path}: its {source.name} holds {len(entries)} member config(s), its manifest says "
                f"{manifest['members']}: the file is damaged"
            )
        return cls(path, [validate_config(d, stored=True) for d in entries], manifest)

    @property
    def config_hash(self) -> str:
        return ensemble_hash(self.configs)

    def check_config(self) -> None:
        """As RunDirectory's, and for an ensemble also its config.yaml, member 0's copy, which the
        hash of members.yaml does not cover."""
        super().check_config()
        if len(self.configs) > 1:
            copy = validate_config(read_yaml(self.path / "config.yaml"), stored=True)
            if ensemble_hash([copy]) != ensemble_hash(self.configs[:1]):
                raise RunStoreError(
                    f"run {self.id}: its config.yaml (member 0's config) was changed since the run "
                    "started; the ensemble trains from members.yaml: restore config.yaml to resume"
                )

    # metrics -------------------------------------------------------------------------------

    def _rows(self, metric: str, split: str, member: int | None) -> pa.Table:
        """The table's rows of one metric, split and member (RunStoreError if the run has no such
        member), by step; none if the run logged no such metric on that split."""
        member = self._member(member)
        self.member_config(member)
        t = self.metrics
        keep = pc.and_(pc.equal(t["metric"], metric), pc.equal(t["split"], split))
        return t.filter(pc.and_(keep, pc.equal(t["member"], member))).sort_by("step")

    def curve(
        self, metric: str, split: str, head: str | None = None, member: int | None = None, x: Unit = "steps"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(x, values) of one metric on one split, for one head ("layer.head", e.g. "1.0") or a
        head-less metric; x in steps, sequences or tokens. Empty if the run logged no such values."""
        if head is not None and not isinstance(head, str):
            raise ValueError(f"head is named 'layer.head' (e.g. '1.0'), not {head!r}")
        t = self._rows(metric, split, member)
        t = t.filter(pc.is_null(t["head"]) if head is None else pc.equal(t["head"], head))
        return t[_unit(x)].to_numpy(), t["value"].to_numpy()

    def head_curves(
        self, metric: str, split: str, member: int | None = None, x: Unit = "steps"
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(x, {head: values}) of a per-head metric; x in steps, sequences or tokens. Empty if the
        run logged no such values."""
        t = self._rows(metric, split, member)
        t = t.filter(pc.is_valid(t["head"]))
        heads, xs, values = (
            t["head"].to_numpy(zero_copy_only=False),
            t[_unit(x)].to_numpy(),
            t["value"].to_numpy(),
        )
        return np.unique(xs), {h: values[heads == h] for h in sorted(set(heads))}

    def summary_curve(
        self, metric: str, split: str, summary: str = "mean", member: int | None = None, x: Unit = "steps"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(x, values) of a metric; a per-head metric is summarised over heads (max/min/mean)."""
        if summary not in ("mean", "max", "min"):
            raise ValueError(f"summary over heads: use mean, max or min, not {summary!r}")
        xs, values = self.curve(metric, split, member=member, x=x)
        if values.size:
            return xs, values
        xs, heads = self.head_curves(metric, split, member, x)
        if not heads:
            return xs, values
        return xs, getattr(np, summary)(np.stack(list(heads.values())), axis=0)

    def check_sources(self) -> None:
        """RunStoreError if a module the configs import has changed since the run started: training
        on would mix two versions of its code (the config hash covers the config, not the code)."""
        recorded = self.manifest.get("sources", {})
        now = source_digests(list(recorded))
        for spec, digest in recorded.items():
            if now.get(spec) != digest:
                raise RunStoreError(
                    f"run {self.id} was trained with another version of {spec}: restore the file "
                    "as it was to continue the run, or train a new run"
                )

    @property
    def tokens_per_sequence(self) -> int:
        return TASKS.get(self.config.task.name).io(self.config.task).n_ctx

    def units_at(self, step: float) -> tuple[int, int]:
        """(sequences, tokens) seen by the end of a training step."""
        sequences = round(step * self.config.training.batch_size)
        return sequences, sequences * self.tokens_per_sequence

    def evaluation_schedule(self) -> tuple[int, int]:
        cfg = self.config
        return len(self.configs), cfg.eval.every.to_steps(cfg.training.batch_size, self.tokens_per_sequence)

    # a member's task and evaluation ---------------------------------------------------------

    def member_config(self, member: int | None = None) -> ExperimentConfig:
        """The config of one ensemble member; RunStoreError if the run has no such member."""
        member = self._member(member)
        if not 0 <= member < len(self.configs):
            count = len(self.configs)
            which = "only member 0" if count == 1 else f"members 0 to {count - 1}"
            raise RunStoreError(f"run {self.id} has no member {member} (it has {which})")
        return self.configs[member]

    def eval_data(
        self, member: int | None = None, device: str | torch.device = "cpu"
    ) -> tuple[Task, dict[str, Batch]]:
        """A member's task (its own task config and seed) and the fixed evaluation batch of each
        split that the trainer evaluated it on; built once per member and device (a report and its
        analyses ask many times)."""
        member = self._member(member)
        key = (member, str(device))
        if key not in self._eval_data:
            config = self.member_config(member)
            task = build_task(config, device=str(device))
            self.check_data(member, task)
            self._eval_data[key] = task, eval_batches(config, task, torch.device(device))
        return self._eval_data[key]

    def check_recorded_data(self) -> None:
        """check_data for every member whose data the run recorded (tasks that read files only: the
        others are not built), e.g. before a sweep reuses the run."""
        for member in map(int, self.manifest.get("data", {})):
            self.check_data(member, build_task(self.member_config(member)))

    def check_data(self, member: int, task: Task) -> None:
        """RunStoreError if the files a member's task reads hold other data than the run recorded
        when it started (Task.data_digest): its curves and checkpoints would not be of these data."""
        found, recorded = task.data_digest(), self.manifest.get("data", {}).get(str(member))
        if found and recorded and found[1] != recorded:
            raise RunStoreError(
                f"run {self.id} was trained on other data than {found[0]} gives now: restore the "
                "files as they were, or train a new run"
            )

    def clamps_at(self, step: int, member: int | None = None) -> list[Clamp]:
        """The member's clamps that its evaluation at `step` applied (none if eval.with_clamps is off)."""
        config = self.member_config(member)
        return active_at(config.clamps, step) if config.eval.with_clamps else []

    def whose(self, member: int | None = None) -> str:
        """'seed s' of a member (default the handle's), and which member it is of an ensemble."""
        member = self._member(member)
        seed = f"seed {self.member_config(member).seed}"
        return seed + (f", member {member} of {len(self.configs)}" if len(self.configs) > 1 else "")

    @functools.cached_property
    def layers_heads(self) -> tuple[int, int]:
        """(blocks, heads per block) of the run's model: its config may not say (reduced models)."""
        model = build_model(self.config)
        return model.n_layers, model.n_heads

    # checkpoints ---------------------------------------------------------------------------

    def parameters(self, step: int | None = None) -> dict[str, Tensor]:
        """Every member's parameters at a checkpoint (default: the latest), stacked on axis 0."""
        return TrainState.parameters(self.load_checkpoint(step))

    def model(self, step: int | None = None, member: int | None = None, device: str = "cpu") -> Model:
        """The model of one member at a checkpoint (default: the latest), built on `device`."""
        member = self._member(member)
        model = build_model(self.member_config(member), device)
        checkpoint = self.load_checkpoint(step)
        params = TrainState.parameters(checkpoint)
        expected = dict(model.named_parameters())
        if set(params) != set(expected) or any(params[k].shape[1:] != p.shape for k, p in expected.items()):
            raise CheckpointError(f"checkpoint at step {checkpoint.step} does not fit this model")
        model.load_state_dict({k: v[member] for k, v in params.items()})
        return model.eval()


def list_runs(
    runs_dir: str | Path = "runs",
    kinds: tuple[type[RunDirectory], ...] = (Run,),
    unreadable: dict[Path, str] | None = None,
) -> list:
    """Every readable run of the given kinds (model runs by default; SAERun for SAE runs) under a
    directory, oldest first. A directory with a manifest that none of them opens is left out; given
    `unreadable`, it is put there with why (as the kind its manifest names says, if one does)."""
    runs = []
    entries = Path(runs_dir).iterdir()  # an unreadable directory raises here, where glob finds nothing
    manifests = sorted(p / "manifest.json" for p in entries if not p.name.startswith("."))  # no staging
    for path in (m for m in manifests if m.is_file()):
        reasons = []
        for kind in kinds:
            try:
                runs.append(kind.open(path.parent))
                break
            except IclLabError as e:  # another kind, or unreadable: not fatal to listing
                with contextlib.suppress(IclLabError):
                    kind.read_manifest(path.parent)
                    reasons.insert(0, str(e))  # its manifest names this kind: the reason that counts
                    continue
                reasons.append(str(e))
        else:
            if unreadable is not None:
                unreadable[path.parent] = reasons[0]
    return runs
