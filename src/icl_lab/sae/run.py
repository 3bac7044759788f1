"""An SAE training run: runs/<id>/{config.yaml, manifest.json, metrics.parquet, checkpoints/}, like
a model run. Trained with a progress bar, evaluated and checkpointed on its schedule, resumable
bit-identically (the activation buffer is refilled from the seed), marked complete only when whole.

Metrics (split "eval": held-out sequences, fixed by the seed; "train_batches": running means since
the last evaluation) are indexed by step; `sequences` and `tokens` count activations seen.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from icl_lab.config import check_trainable_here
from icl_lab.errors import ConfigError, DivergenceError, IclLabError, Interrupted, RunStoreError
from icl_lab.experiment import build_task, validate_config
from icl_lab.models import Model
from icl_lab.sae.activations import fill_buffer, hook_z, splice_scores
from icl_lab.sae.base import SAE, build_sae
from icl_lab.sae.config import SAERunConfig, validate_sae_config
from icl_lab.sae.fit import Fitter
from icl_lab.sae.metrics import sae_quality
from icl_lab.seeding import generator
from icl_lab.store.checkpoints import save_checkpoint
from icl_lab.store.directory import RunDirectory, evaluation_steps
from icl_lab.store.metrics_table import TRAIN_SPLIT
from icl_lab.store.run import Run
from icl_lab.tasks import TASKS, Task
from icl_lab.training.metrics_logger import MetricsLogger
from icl_lab.training.progress import TrainingProgress
from icl_lab.training.trainer import on_sigterm

FORMAT = "icl-lab-sae/1"
UNMOVED = 0.9  # a decoder row whose cosine to its initialisation is at least this has not left it


@dataclass
class Source:
    """The model an SAE reads (its run and checkpoint step), the task its sequences come from, and
    the hook's width."""

    run: Run
    step: int
    model: Model
    task: Task
    hook: str
    d_in: int
    n_heads: int

    @property
    def unfinished(self) -> str:
        """'' for a complete model run, else what an SAE on it reads, e.g. "step 400 of run X,
        which diverged at step 437"."""
        status, manifest = self.run.status, self.run.manifest
        if status == "complete":
            return ""
        at = manifest.get(f"{status}_at")
        state = f"{status} at step {at:,}" if isinstance(at, int) else status
        return f"step {self.step:,} of run {self.run.id}, which is {state}"


def open_source(config: SAERunConfig, device: str = "cpu", step: int | None = None) -> Source:
    """The source model and task of an SAE config, on `device` (training uses the config's, analyses
    the CPU), at `step`, else source.step, else the run's latest checkpoint; ConfigError (one line)
    if the run lacks the hook or its width disagrees with sae.d_in."""
    src = config.source
    run = Run.open(src.run)
    latest = run.checkpoint_steps[-1] if run.checkpoint_steps else None
    step = step if step is not None else src.step if src.step is not None else latest
    model = run.model(step, src.member).to(device)
    name = hook_z(src.layer)
    if name not in model.hook_dict:
        layers = sorted({n.split(".")[1] for n in model.hook_dict if n.endswith("attn.hook_z")})
        raise ConfigError(
            f"source.layer: run {run.id} has no hook {name} "
            f"(its attention layers: {', '.join(layers) or 'none'})"
        )
    member = run.member_config(src.member)
    if src.task:
        data = member.model_dump(mode="json", by_alias=True)
        data["task"] |= src.task
        trained, member = model.io, validate_config(data, stored=True)
        changed = TASKS.get(member.task.name).io(member.task)
        same_kind = (changed.d_vocab, changed.d_input) == (trained.d_vocab, trained.d_input)
        if not same_kind or changed.n_ctx > trained.n_ctx:
            raise ConfigError(
                f"source.task: the changed task feeds the model {changed.inputs}, but the model of run "
                f"{run.id} was trained on {trained.inputs}: keep its inputs"
            )
    task = build_task(member, device=device)
    if not src.task:  # a changed task reads other data by design
        run.check_data(src.member, task)
    probe = task.sample(1, generator(config.seed, "sae", "probe", device=device)).inputs
    logits, cache = model.run_with_cache(probe, names_filter=name)
    if not model.scores_next_tokens(probe, logits):  # CE loss recovered splices into next-token logits
        raise ConfigError(
            f"source.run: the model of run {run.id} is not a language model ({model.io}); an SAE is "
            "scored by the next-token loss it recovers, which needs token ids in and a logit for every "
            "token at every position out"
        )
    n_heads, d_head = cache[name].shape[-2:]
    d_in = n_heads * d_head
    if config.sae.d_in is not None and config.sae.d_in != d_in:
        raise ConfigError(
            f"sae.d_in: {config.sae.d_in} does not match {name} of run {run.id}, "
            f"which is {n_heads} heads x {d_head} = {d_in} wide"
        )
    if problem := config.sae.width_problem(d_in):
        raise ConfigError(problem)
    return Source(run, step, model, task, name, d_in, n_heads)


class SAERun(RunDirectory):
    """Handle on an SAE run's directory: its config, metrics, checkpoints and trained SAE."""

    FORMAT = FORMAT
    REQUIRED = ("created", "d_in", "n_ctx")

    def __init__(self, path: Path, config: SAERunConfig, manifest: dict[str, Any]) -> None:
        super().__init__(path, manifest)
        self.config = config

    @property
    def config_hash(self) -> str:
        return self.config.hash()

    @classmethod
    def create(
        cls, config: SAERunConfig, runs_dir: str | Path, source: Source, run_id: str | None = None
    ) -> "SAERun":
        """A new SAE run directory, marked running, recording the source hook's width and context,
        the source checkpoint's step (the model run may train on later, and its latest checkpoint
        move) and the source run's config hash (another run may take its path); the id defaults to
        the config's name and the time."""
        run_id = run_id or cls.new_id(config.name)
        path, staging = cls._staging(Path(runs_dir), run_id, {"config.yaml": config.to_yaml()})
        shape = {
            "d_in": source.d_in,
            "n_heads": source.n_heads,
            "n_ctx": source.task.tokens_per_sequence,
            "source_step": source.step,
            "source_hash": source.run.config_hash,
        }
        run = cls(staging, config, cls._new_manifest(run_id, config.hash(), **shape))
        run._commit(path)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "SAERun":
        from icl_lab.experiment import read_yaml

        path = Path(path)
        manifest = cls.read_manifest(path)
        return cls(path, validate_sae_config(read_yaml(path / "config.yaml"), stored=True), manifest)

    def evaluation_schedule(self) -> tuple[int, int]:
        return 1, self.config.eval.every

    def source(self, device: str = "cpu") -> Source:
        """The source model at the checkpoint this SAE was trained on (SAE runs from before that was
        recorded: its config's step, else the model run's latest)."""
        changed = self.source_changed()
        if changed:
            raise RunStoreError(changed)
        if not Path(self.config.source.run).is_dir():
            raise RunStoreError(
                f"the model run SAE run {self.id} reads, {self.config.source.run}, is gone (moved or deleted)"
            )
        return open_source(self.config, device, self.manifest.get("source_step"))

    def source_changed(self) -> str:
        """Why the model run now at source.run is not the one this SAE was trained on ('' when it is,
        when it is gone, or when the SAE run predates the record)."""
        recorded, path = self.manifest.get("source_hash"), self.config.source.run
        if recorded is None or not Path(path).is_dir():
            return ""
        current = Run.open(path).config_hash
        if current == recorded:
            return ""
        return (
            f"the model run at {path} is not the one SAE run {self.id} was trained on (its config "
            f"hash is {current[:12]}, the SAE's source had {recorded[:12]})"
        )

    def sae(self, step: int | None = None) -> SAE:
        """The SAE at a checkpoint (default: the latest; RunStoreError if the run is marked complete
        but its final checkpoint is gone), in eval mode."""
        if step is None:
            self.check_whole()
        sae = build_sae(self.config.sae, self.manifest["d_in"], self.config.seed)
        sae.load_state_dict(self.load_checkpoint(step).group("param"))
        return sae.eval()

    @torch.no_grad()
    def cosine_to_init(self, sae: SAE) -> Tensor:
        """(d_sae,) each decoder row's cosine to its random initialisation (step 0). Rows at UNMOVED
        or above never left it (features that rarely fire barely train), so their head shares are
        the initialisation's chance, not learned."""
        initial = self.load_checkpoint(0).group("param")["W_dec"]
        return torch.nn.functional.cosine_similarity(sae.W_dec, initial, dim=1)

    @property
    def scale(self) -> float:
        """The input scale the SAE was trained at (x_sae = scale x hook_z)."""
        return float(self.manifest.get("scale", 1.0))


class SAETrainer:
    """Fills the buffer, then trains, evaluates and checkpoints an SAE run to its length."""

    def __init__(self, run: SAERun, source: Source, progress: bool = True) -> None:
        self.run, self.source, self.progress = run, source, progress
        cfg = run.config
        torch.set_num_threads(cfg.training.threads)
        device = cfg.training.device
        buffer_g, layer = generator(cfg.seed, "sae", "buffer", device=device), cfg.source.layer
        self.buffer = fill_buffer(
            source.model,
            source.task,
            layer,
            cfg.buffer.tokens,
            buffer_g,
            cfg.buffer.chunk,
            cfg.buffer.normalisation,
        )
        run.update_manifest(
            scale=self.buffer.scale,
            buffer={"tokens": len(self.buffer.activations), "bytes": self.buffer.bytes, "hook": source.hook},
        )
        eval_g = generator(cfg.seed, "sae", "eval", device=device)
        self.eval_inputs = source.task.sample(cfg.eval.sequences, eval_g).inputs
        self.eval_activations = self._activations_of(self.eval_inputs)
        self.sae = build_sae(cfg.sae, source.d_in, cfg.seed).to(device)  # initialised alike on any device
        self.fitter = Fitter(self.sae, cfg.training, generator(cfg.seed, "sae", "batches", device=device))
        self.logger = MetricsLogger(run.metrics_path, ("eval", "ce_recovered", "mean"))
        self.sums: dict[str, float] = {}
        self.count = 0
        self.wall_s, self._t0 = 0.0, time.perf_counter()  # fit() restarts the clock

    @torch.no_grad()
    def _activations_of(self, inputs: Tensor) -> Tensor:
        _, cache = self.source.model.run_with_cache(inputs, names_filter=self.source.hook)
        return cache[self.source.hook].flatten(2).flatten(0, 1) * self.buffer.scale  # (B x T, d_in)

    @property
    def total_steps(self) -> int:
        return self.run.config.training.steps

    def _expected_history(self, upto: int) -> set[int]:
        return evaluation_steps(self.run.config.eval.every, upto, self.total_steps)

    def _units(self) -> dict[str, Any]:
        seen = self.fitter.step * self.run.config.training.batch_size
        wall = self.wall_s + time.perf_counter() - self._t0
        return {"step": self.fitter.step, "sequences": seen, "tokens": seen, "wall_s": wall}

    @torch.no_grad()
    def evaluate(self) -> None:
        """Quality on the held-out activations, CE recovered and KL with the reconstruction spliced
        into the model, and the training-batch means since the last evaluation."""
        self.sae.eval()
        quality = sae_quality(self.sae, self.eval_activations)
        values = {
            "l0": quality.l0,
            "mse": quality.mse,
            "explained_variance": quality.explained_variance,
            "dead_fraction": quality.dead_fraction,
            "dense_fraction": quality.dense_fraction,
        }
        reconstruct = lambda x: self.sae.decode(self.sae.encode(x))  # noqa: E731
        values |= splice_scores(
            self.source.model, self.eval_inputs, self.run.config.source.layer, reconstruct, self.buffer.scale
        )
        units = self._units()
        self.logger.log(units, 0, "eval", {k: torch.tensor(v) for k, v in values.items()})
        if self.count:
            means = {k: torch.tensor(v / self.count) for k, v in self.sums.items()}
            self.logger.log(units, 0, TRAIN_SPLIT, means)
        self.sums, self.count = {}, 0
        self.logger.write()
        self.sae.train()

    def save(self) -> None:
        units = self._units()
        self.wall_s, self._t0 = units["wall_s"], time.perf_counter()
        tensors, info = self.fitter.state_dict()
        names = sorted(self.sums)
        tensors["trainer/sums"] = torch.tensor([self.sums[k] for k in names], dtype=torch.float64)
        info |= {
            "config_hash": self.run.config_hash,
            "wall_s": self.wall_s,
            "sum_names": names,
            "count": self.count,
        }
        save_checkpoint(self.run.checkpoint_dir, self.fitter.step, tensors, info)
        self.run.update_manifest(last_checkpoint=self.fitter.step)

    def restore(self, step: int) -> None:
        self.run.drop_checkpoints_after(step)
        checkpoint = self.run.load_checkpoint(step)
        self.fitter.load_state_dict(checkpoint)
        sums = checkpoint.tensors["trainer/sums"].tolist()
        self.sums = dict(zip(checkpoint.info["sum_names"], sums, strict=True))
        self.count, self.wall_s = checkpoint.info["count"], checkpoint.info["wall_s"]
        self.logger.restore(self.run.metrics, step)

    def train_step(self) -> None:
        out = self.fitter.train_step(self.buffer.activations)
        terms = {**out.losses, "l0": self.fitter.l0}
        values = dict(zip(terms, torch.stack(list(terms.values())).tolist(), strict=True))  # one sync
        if not all(map(math.isfinite, values.values())):
            message = f"SAE run {self.run.id} diverged at step {self.fitter.step}: non-finite loss"
            if self.source.unfinished:
                message += f" (its source is {self.source.unfinished})"
            self.run.update_manifest(status="diverged", diverged_at=self.fitter.step, error=message)
            raise DivergenceError(message)
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1
        self.latest = values

    def fit(self, resumed: bool) -> SAERun:
        """Train to the configured length; evaluate at step 0, every eval interval and at the end."""
        self._t0 = time.perf_counter()
        cfg, run = self.run.config, self.run
        run.acquire()
        run.update_manifest(status="running", total_steps=self.total_steps)
        every_ckpt = cfg.checkpointing.every
        try:
            with (
                on_sigterm(),
                TrainingProgress(run.id, self.total_steps, self.fitter.step, self.progress) as bar,
            ):
                if not resumed:
                    self.evaluate()
                    self.save()
                self.sae.train()
                while self.fitter.step < self.total_steps:
                    self.train_step()
                    step = self.fitter.step
                    last = step == self.total_steps
                    if step % cfg.eval.every == 0 or last:
                        self.evaluate()
                    if last or (every_ckpt and step % every_ckpt == 0):
                        self.save()
                    if step % cfg.training.log_every == 0 or last:
                        bar.update(step, self._status)
            missing = sorted(self._expected_history(self.total_steps) - set(self.logger.rows.columns["step"]))
            if missing:
                raise IclLabError(f"SAE run {run.id}: metrics are missing at steps {missing[:5]}")
            finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            run.update_manifest(status="complete", finished=finished, metrics_rows=self.logger.row_count)
        except (KeyboardInterrupt, Interrupted) as e:
            run.record(status="interrupted", interrupted_at=self.fitter.step)
            if isinstance(e, Interrupted):
                e.continue_with = f"icl-lab sae resume {run.path}"
            raise
        except DivergenceError:
            raise
        except Exception as e:
            run.record_failure(e)
            raise
        finally:
            run.release()
        return run

    def _status(self) -> str:
        latest = getattr(self, "latest", {})
        parts = [f"{k} {latest[k]:.3g}" for k in ("mse", "l0") if k in latest]
        if self.logger.key_value is not None:
            parts.append(f"CE recovered {self.logger.key_value:.3f}")
        return " | ".join(parts)


def train_sae(
    config: SAERunConfig,
    runs_dir: str | Path = "runs",
    progress: bool = True,
    run_id: str | None = None,
    source: Source | None = None,
) -> SAERun:
    """Check the source (before anything is written; `source`: already opened on the config's
    device), create the SAE run and train it."""
    source = source or open_source(config, config.training.device)
    run = SAERun.create(config, runs_dir, source, run_id)
    try:
        trainer = SAETrainer(run, source, progress)
    except Exception as e:  # the new run must not stay marked running (as if it could resume)
        run.record_failure(e)
        raise
    return trainer.fit(resumed=False)


def resume_sae(run: SAERun, progress: bool = True) -> SAERun:
    """Continue an SAE run from its latest checkpoint whose metrics history is whole."""
    check_trainable_here(run.config, run.id)
    run.check_config()
    run.acquire()
    trainer = SAETrainer(run, run.source(run.config.training.device), progress)
    step = run.resume_point(trainer._expected_history)
    if step is not None:
        trainer.restore(step)
    return trainer.fit(resumed=step is not None)
