"""The trainer: one code path for a single run and for an ensemble of members.

Parameters live stacked along a leading member axis; a step samples each member's batch from its
own generator, evaluates every member's loss in one call (torch.func.vmap over members when there
are several), and updates all members with one optimiser (elementwise, so members stay
independent; gradient clipping is per member). Clamps compile to hooks gated per member.
Evaluation, metrics and checkpoints all carry the member axis. Resuming from a checkpoint
continues bit-identically on the CPU: parameters, optimiser state, data-generator states and the
running training-loss accumulator are all restored, and evaluation batches depend on seeds only.
"""

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from torch import Tensor
from torch.func import functional_call, vmap

from icl_lab.evaluation import eval_batches, evaluate, metric_names
from icl_lab.experiment import ExperimentConfig, build_model, build_task, check_ensemble
from icl_lab.interventions import Clamp
from icl_lab.interventions.base import clamped_forward
from icl_lab.seeding import generator
from icl_lab.store.checkpoints import Checkpoint, save_checkpoint
from icl_lab.store.metrics_table import TRAIN_SPLIT, MetricsLog
from icl_lab.store.run import Run
from icl_lab.tasks import Batch
from icl_lab.training.optim import build_optimizer, clip_grad_norm_per_member, lr_at
from icl_lab.training.progress import TrainingProgress


def over_members(fn: Callable[..., Tensor], n_members: int) -> Callable[..., Tensor]:
    """fn over the leading member axis of every argument: vmap for an ensemble, a plain call
    (no batching overhead) for a single member."""
    if n_members > 1:
        return vmap(fn)

    def single(*args: Any) -> Tensor:
        return fn(*[_only_member(a) for a in args]).unsqueeze(0)

    return single


def _only_member(x: Any) -> Any:
    # squeeze, not x[0]: its backward is a view, where indexing's backward fills a zero tensor
    return {k: _only_member(v) for k, v in x.items()} if isinstance(x, dict) else x.squeeze(0)


class Trainer:
    """Trains the members of a run, evaluating and checkpointing as its config says."""

    def __init__(self, run: Run, progress: bool = True) -> None:
        self.run, self.progress = run, progress
        cfg = run.config
        self.members: list[ExperimentConfig] = run.configs
        check_ensemble(self.members)
        self.device = torch.device(cfg.training.device)
        torch.set_num_threads(cfg.training.threads)
        self.tasks = [build_task(m, device=str(self.device)) for m in self.members]
        self.model = build_model(cfg, self.device, self.tasks[0])
        self.model.batched(len(self.members) > 1)
        batch_size, tokens = cfg.training.batch_size, self.tasks[0].tokens_per_sequence
        self.batch_size, self.tokens_per_sequence = batch_size, tokens
        self.total_steps = cfg.training.length.to_steps(batch_size, tokens)
        self.eval_every = cfg.eval.every.to_steps(batch_size, tokens)
        every = cfg.checkpointing.every
        self.checkpoint_every = every.to_steps(batch_size, tokens) if every else None
        self.params = self._init_params()
        self.optimizer = build_optimizer(list(self.params.values()), cfg.training.optimizer)
        self.data_generators = [generator(m.seed, "data", device=self.device) for m in self.members]
        self.eval_batches = self._eval_batches()
        self.clamps = self._clamp_table()
        self.metric_names = metric_names(cfg, self.tasks[0])
        self.step, self.wall_offset, self.restored = 0, 0.0, False
        self.loss_sum = torch.zeros(len(self.members), device=self.device)
        self.loss_count = 0
        self.log = MetricsLog()
        self.latest_losses: Tensor | None = None
        self.key_value: float | None = None

    # set-up ----------------------------------------------------------------------------

    def _init_params(self) -> dict[str, Tensor]:
        """Each member's weights drawn from its own seed, stacked along axis 0."""
        per_member = []
        for m in self.members:
            self.model.reset_parameters(generator(m.seed, "init", device=self.device))
            per_member.append({k: p.detach().clone() for k, p in self.model.named_parameters()})
        return {k: torch.stack([p[k] for p in per_member]).requires_grad_() for k in per_member[0]}

    def _eval_batches(self) -> dict[str, Batch]:
        """Fixed evaluation batches per split, stacked over members."""
        per_member = [
            eval_batches(m, task, m.seed, self.device)
            for m, task in zip(self.members, self.tasks, strict=True)
        ]
        return {split: Batch.stack([b[split] for b in per_member]) for split in per_member[0]}

    def _clamp_table(self) -> list[tuple[Clamp, Tensor]]:
        """Every distinct clamp of any member, with a (M,) flag of the members that carry it."""
        table: dict[str, tuple[Clamp, list[bool]]] = {}
        for i, m in enumerate(self.members):
            for clamp in m.clamps:
                key = clamp.model_dump_json()
                table.setdefault(key, (clamp, [False] * len(self.members)))[1][i] = True
        return [(c, torch.tensor(flags, device=self.device)) for c, flags in table.values()]

    def _active_clamps(self) -> tuple[list[Clamp], Tensor]:
        """Clamps active at the current step, and their per-member flags (M, n_active)."""
        active = [(c, flags) for c, flags in self.clamps if c.steps.contains(self.step)]
        flags = torch.zeros(len(self.members), 0, dtype=torch.bool, device=self.device)
        if active:
            flags = torch.stack([f for _, f in active], dim=1)
        return [c for c, _ in active], flags

    # training --------------------------------------------------------------------------

    def train_step(self) -> None:
        batch = Batch.stack(
            [
                task.training_sample(self.batch_size, g, self.step)
                for task, g in zip(self.tasks, self.data_generators, strict=True)
            ]
        )
        clamps, on = self._active_clamps()
        task = self.tasks[0]

        def member_loss(
            params: dict, inputs: Tensor, targets: Tensor, mask: Tensor, meta: dict, on: Tensor
        ) -> Tensor:
            def forward(hooks: list) -> Tensor:
                with self.model.hooks(hooks):
                    return functional_call(self.model, params, (inputs,))

            logits = clamped_forward(forward, self.model, clamps, on, meta, inputs)
            return task.loss(logits, targets, mask)

        losses = over_members(member_loss, len(self.members))(
            self.params, batch.inputs, batch.targets, batch.loss_mask, batch.meta, on
        )  # (M,)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        cfg = self.run.config.training
        if cfg.grad_clip is not None:
            clip_grad_norm_per_member(list(self.params.values()), cfg.grad_clip)
        self._update()
        self.latest_losses = losses.detach()
        self.loss_sum += self.latest_losses
        self.loss_count += 1
        self.step += 1

    def _update(self) -> None:
        """One optimiser step at each member's learning rate for this step."""
        lrs = [
            lr_at(self.step, self.total_steps, m.training.optimizer.lr, m.training.schedule)
            for m in self.members
        ]
        group = self.optimizer.param_groups[0]
        if len(set(lrs)) == 1:
            group["lr"] = lrs[0]
            self.optimizer.step()
            return
        # members at different learning rates: step at lr 1, then take each member's fraction of the
        # update (SGD, Adam and AdamW updates, weight decay included, scale linearly with lr)
        before = [p.detach().clone() for p in self.params.values()]
        group["lr"] = 1.0
        self.optimizer.step()
        weight = torch.tensor(lrs, device=self.device)
        with torch.no_grad():
            for old, p in zip(before, self.params.values(), strict=True):
                p.copy_(torch.lerp(old, p, weight.view(-1, *[1] * (p.dim() - 1))))

    # evaluation ------------------------------------------------------------------------

    def load_member(self, member: int) -> None:
        """Copy one member's parameters into the template model (for evaluation and analysis)."""
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(self.params[name][member])

    @torch.no_grad()
    def evaluate_all(self) -> None:
        """Evaluate every member on every split and append the rows to the metrics log."""
        units = self._units()
        clamps, on = self._active_clamps()
        with_clamps = self.run.config.eval.with_clamps
        for m in range(len(self.members)):
            self.load_member(m)
            for split, stacked in self.eval_batches.items():
                batch = stacked.member(m)
                if with_clamps:
                    values = evaluate(self.model, self.tasks[m], batch, self.metric_names, clamps, on[m])
                else:
                    values = evaluate(self.model, self.tasks[m], batch, self.metric_names)
                for metric, value in values.items():
                    self._log_value(units, m, split, metric, value)
            if self.loss_count:
                mean = self.loss_sum[m] / self.loss_count
                self._log_value(units, m, TRAIN_SPLIT, "loss", mean)
        self.loss_sum.zero_()
        self.loss_count = 0
        self.log.write(self.run.metrics_path)

    def _log_value(self, units: dict, member: int, split: str, metric: str, value: Tensor) -> None:
        values = value.double().cpu()
        if values.dim() == 0:
            self.log.add(**units, member=member, split=split, metric=metric, head=None, value=values.item())
        else:  # per-head (n_layers, n_heads)
            for (layer, head), v in np.ndenumerate(values.numpy()):
                head_name = f"{layer}.{head}"
                self.log.add(
                    **units, member=member, split=split, metric=metric, head=head_name, value=float(v)
                )
        if member == 0:
            self._track_key_value(split, metric, values)

    def _track_key_value(self, split: str, metric: str, values: Tensor) -> None:
        key_split, key, summary = self.tasks[0].key_metric
        if metric == key and split == key_split:
            self.key_value = float(getattr(values, summary)())

    def _units(self) -> dict[str, Any]:
        sequences = self.step * self.batch_size
        return {
            "step": self.step,
            "sequences": sequences,
            "tokens": sequences * self.tokens_per_sequence,
            "wall_s": self.wall_offset + time.perf_counter() - self._t0,
        }

    # checkpoints -----------------------------------------------------------------------

    def save(self) -> None:
        tensors = {f"param/{k}": v for k, v in self.params.items()}
        state = self.optimizer.state_dict()
        for index, entries in state["state"].items():
            for key, value in entries.items():
                tensors[f"optim/{index}/{key}"] = value
        for i, g in enumerate(self.data_generators):
            tensors[f"rng/data/{i}"] = g.get_state()
        tensors["trainer/loss_sum"] = self.loss_sum
        units = self._units()
        info = {
            "config_hash": self.run.config_hash,
            "sequences": units["sequences"],
            "tokens": units["tokens"],
            "wall_s": units["wall_s"],
            "members": len(self.members),
            "loss_count": self.loss_count,
            "param_groups": state["param_groups"],
        }
        save_checkpoint(self.run.checkpoint_dir, self.step, tensors, info)
        self.run.update_manifest(last_checkpoint=self.step)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint of this run exactly where it was written."""
        with torch.no_grad():
            for k, v in checkpoint.group("param").items():
                self.params[k].copy_(v)
        state: dict[str, Any] = {"state": {}, "param_groups": checkpoint.info["param_groups"]}
        for key, value in checkpoint.group("optim").items():
            index, name = key.split("/")
            state["state"].setdefault(int(index), {})[name] = value.to(self.device)
        self.optimizer.load_state_dict(state)
        for i, g in enumerate(self.data_generators):
            g.set_state(checkpoint.tensors[f"rng/data/{i}"])
        self.loss_sum.copy_(checkpoint.tensors["trainer/loss_sum"])
        self.loss_count = checkpoint.info["loss_count"]
        self.step, self.wall_offset = checkpoint.step, checkpoint.info["wall_s"]
        self.restored = True
        table = self.run.metrics
        self.log = MetricsLog(table.filter(pc.less_equal(table["step"], self.step)))

    # the loop --------------------------------------------------------------------------

    def fit(self) -> Run:
        """Train to the configured length; evaluate at step 0, every eval interval and at the end."""
        self._t0 = time.perf_counter()
        log_every = self.run.config.training.log_every
        self.run.update_manifest(status="running", total_steps=self.total_steps)
        try:
            with TrainingProgress(self.run.id, self.total_steps, self.step, self.progress) as bar:
                if not self.restored:  # a fresh start: evaluate and checkpoint the initial model
                    self.evaluate_all()
                    self.save()
                while self.step < self.total_steps:
                    self.train_step()
                    if self.step % self.eval_every == 0 or self.step == self.total_steps:
                        self.evaluate_all()
                    if self.step == self.total_steps or (
                        self.checkpoint_every and self.step % self.checkpoint_every == 0
                    ):
                        self.save()
                    if self.step % log_every == 0 or self.step == self.total_steps:
                        bar.update(self.step, self._status)
        except KeyboardInterrupt:
            self.run.update_manifest(status="interrupted", interrupted_at=self.step)
            raise
        except Exception as e:
            self.run.update_manifest(status="failed", error=f"{type(e).__name__}: {e}")
            raise
        self.run.update_manifest(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        return self.run

    def _status(self) -> str:
        split, key, summary = self.tasks[0].key_metric
        parts = [f"loss {self.latest_losses.mean().item():.3f}"] if self.latest_losses is not None else []
        if self.key_value is not None:
            parts.append(
                f"{split} {key}" + (f" ({summary})" if summary != "mean" else "") + f" {self.key_value:.3f}"
            )
        return " | ".join(parts)


def train(
    configs: ExperimentConfig | list[ExperimentConfig],
    runs_dir: str = "runs",
    progress: bool = True,
    run_id: str | None = None,
) -> Run:
    """Create a run directory for a validated config (or an ensemble's member configs) and train
    it to completion."""
    members = configs if isinstance(configs, list) else [configs]
    check_ensemble(members)  # before anything is written
    run = Run.create(members, runs_dir, run_id)
    return Trainer(run, progress).fit()


def resume(run: Run, progress: bool = True) -> Run:
    """Continue a run from its latest checkpoint (or from the start if it has none)."""
    trainer = Trainer(run, progress)
    if run.checkpoint_steps:
        trainer.restore(run.load_checkpoint())
    else:
        trainer.log = MetricsLog()
    return trainer.fit()
