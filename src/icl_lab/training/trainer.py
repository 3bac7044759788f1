"""The trainer: one code path for a single run and for an ensemble of members.

Parameters live stacked along a leading member axis; a step samples each member's batch from its
own generator, evaluates every member's loss in one call (torch.func.vmap over members when there
are several), and updates all members with one optimiser (elementwise, so members stay
independent; gradient clipping is per member). Clamps compile to hooks gated per member.

Its parts: a TrainState (what a checkpoint holds, and its key format), an Evaluator (each member
on its own fixed evaluation batches) and a MetricsLogger (the metrics table). Resuming from a
checkpoint continues bit-identically on the CPU: parameters, optimiser state, data-generator
states and the running training-loss accumulator are all restored, and evaluation batches depend
on seeds only. With training.compile the whole step (losses, gradients
by torch.func.grad, clipping and the optimiser's update) is one torch.compile'd function
(training/compiled.py), on a GPU optionally replayed as CUDA graphs (training.cuda_graphs);
nothing else changes.
"""

import contextlib
import functools
import itertools
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, vmap

from icl_lab.config import check_trainable_here
from icl_lab.errors import (
    CheckpointError,
    ComponentError,
    ConfigError,
    DivergenceError,
    Interrupted,
    RunStoreError,
)
from icl_lab.evaluation import key_metric, metric_names
from icl_lab.experiment import ExperimentConfig, build_model, build_task, check_ensemble, total_steps
from icl_lab.interventions import Clamp
from icl_lab.interventions.base import clamped_forward
from icl_lab.models import Model
from icl_lab.seeding import derive_seed, forked_generators, generator
from icl_lab.store.checkpoints import checkpoint_paths, save_checkpoint
from icl_lab.store.directory import evaluation_steps
from icl_lab.store.metrics_table import TRAIN_SPLIT
from icl_lab.store.run import Run
from icl_lab.store.train_state import TrainState
from icl_lab.tasks import Batch, Task
from icl_lab.training.compiled import (
    KERNEL_MEMBER_STEPS,
    compile_settings,
    compiled_kernels,
    graph_break_reason,
    should_compile,
)
from icl_lab.training.evaluator import Evaluator
from icl_lab.training.metrics_logger import MetricsLogger
from icl_lab.training.optim import (
    build_optimizer,
    clip_grad_norm_per_member,
    functional_update,
    lr_at,
    optimizer_state,
)
from icl_lab.training.progress import TrainingProgress


def _repetition(task: Task) -> dict[str, float] | None:
    """What a task's repetition plan makes of the run, for the manifest (None: no repetition)."""
    plan = task.repetition
    if plan is None:
        return None
    return {
        "bank_sequences_per_batch": plan.per_batch,
        "bank_size": plan.bank_size,
        "epochs": plan.epochs,
        "repeated_share": plan.per_batch / plan.batch_size,
    }


def over_members(fn: Callable[..., Tensor], n_members: int) -> Callable[..., Tensor]:
    """fn over the leading member axis of every argument: vmap for an ensemble, a plain call
    (no batching overhead) for a single member."""
    if n_members > 1:
        return vmap(fn)

    def single(*args: Any) -> Tensor:
        return fn(*[_only_member(a) for a in args]).unsqueeze(0)

    return single


def clamped_loss(
    model: Model,
    task: Task,
    clamps: list[Clamp],
    params: dict[str, Tensor],
    inputs: Tensor,
    targets: Tensor,
    mask: Tensor,
    meta: dict[str, Tensor],
    on: Tensor,
    table_rows: dict[str, Tensor] | None = None,
) -> Tensor:
    """The task's loss of the model with these parameters on one batch, with the clamps (gated by
    the flags `on`, shape (n_clamps,)) applied: one member's training loss, or one SGLD chain's.
    table_rows: the batch's (Batch.table_rows) for a model that takes_table."""
    if any(c.needs_reference for c in clamps):  # the reference pass doubles inputs, not rows
        table_rows = None

    def forward(inputs: Tensor, hooks: list) -> Tensor:
        with model.hooks(hooks):
            return functional_call(model, params, (inputs,), table_rows or {})

    return task.loss(clamped_forward(forward, model, clamps, on, meta, inputs), targets, mask)


def _only_member(x: Any) -> Any:
    # squeeze, not x[0]: its backward is a view, where indexing's backward fills a zero tensor
    return {k: _only_member(v) for k, v in x.items()} if isinstance(x, dict) else x.squeeze(0)


def _whole(batch: object, task: Task, size: int | None, values: bool = False) -> Batch:
    """A batch a task sampled, or ComponentError unless it is a Batch of `size` sequences (any
    number if None) shaped as the task's io says, and with `values`, its token ids and target classes
    in range (a user's task may be wrong so, and train on wrong data counts or fail obscurely)."""
    name = task.config.name
    if not isinstance(batch, Batch):
        raise ComponentError(f"task {name!r} sampled a {type(batch).__name__}, not a Batch")
    n = len(batch.inputs)
    if size is not None and (n != size or len(batch.targets) != size):
        raise ComponentError(
            f"task {name!r} sampled {n} sequences ({len(batch.targets)} targets) for a batch of {size}"
        )
    io = type(task).io(task.config)
    outputs = (n, len(io.target_positions) if io.target_positions else io.n_ctx)
    inputs = (n, io.n_ctx) if io.d_vocab else (n, io.n_ctx, io.d_input)
    shapes = [tuple(t.shape) for t in (batch.inputs, batch.targets, batch.loss_mask)]
    if shapes[0] != inputs or shapes[1][:2] != outputs or shapes[2] != outputs:
        raise ComponentError(
            f"task {name!r} sampled inputs, targets and loss mask of shapes {shapes[0]}, {shapes[1]}, "
            f"{shapes[2]}; its io asks for {inputs}, {outputs} and {outputs}"
        )
    if not values:
        return batch
    classes = None if batch.targets.is_floating_point() else batch.targets[batch.loss_mask]
    for what, ids, limit in (
        ("token ids", batch.inputs if io.d_vocab else None, io.d_vocab),
        ("target classes", classes, io.d_out),
    ):
        if ids is not None and ids.numel() and (ids.min() < 0 or ids.max() >= limit):
            low, high = ids.min().item(), ids.max().item()
            raise ComponentError(f"task {name!r} sampled {what} from {low} to {high}, outside 0..{limit - 1}")
    if batch.table is not None and not _reads_table(batch):
        raise ComponentError(
            f"task {name!r} sampled inputs that are not its table's rows (Batch.table at Batch.rows)"
        )
    return batch


def _reads_table(batch: Batch) -> bool:
    """Whether batch.inputs are batch.table's rows at batch.rows, as Batch promises a model."""
    table, rows = batch.table, batch.rows
    if rows is None or rows.dtype != torch.long or rows.shape != batch.inputs.shape[:-1] or table.dim() != 2:
        return False
    if rows.numel() and (rows.min() < 0 or rows.max() >= len(table)):
        return False
    return torch.equal(F.embedding(rows, table), batch.inputs)


def _with_kernels(method: Callable[..., None]) -> Callable[..., None]:
    """A trainer method that runs with the compiled kernels its run allows (compiled.py)."""

    @functools.wraps(method)
    def wrapped(self: "Trainer") -> None:
        with compiled_kernels(self.kernels):
            method(self)

    return wrapped


class Trainer:
    """Trains the members of a run, evaluating and checkpointing as its config says."""

    def __init__(self, run: Run, progress: bool = True) -> None:
        self.run, self.progress = run, progress
        cfg = run.config
        self.members: list[ExperimentConfig] = run.configs
        check_ensemble(self.members)
        self.device = torch.device(cfg.training.device)
        torch.set_num_threads(cfg.training.threads)
        data = [run.eval_data(m, self.device) for m in range(len(self.members))]
        self.tasks = [task for task, _ in data]
        for task, batches in data:
            for batch in batches.values():
                _whole(batch, task, None, values=True)
        self._values_checked = False  # those of the first training batch this trainer draws
        digests = {str(m): d[1] for m, task in enumerate(self.tasks) if (d := task.data_digest())}
        if digests and "data" not in run.manifest:  # eval_data checks them from now on
            run.update_manifest(data=digests)
        for m, task in enumerate(self.tasks):  # a member reading other data keeps its own
            if m == 0 or digests.get(str(m)) != digests.get("0"):
                task.save_artifacts(run.path / "members" / str(m) if m else run.path)
        # a task class may draw all members' batches at once (the same batches, faster)
        packed = len(self.tasks) > 1 and len({type(task) for task in self.tasks}) == 1
        self._sample_members = type(self.tasks[0]).members_sampler(self.tasks) if packed else None
        batch_size, tokens = cfg.training.batch_size, self.tasks[0].tokens_per_sequence
        self.batch_size, self.tokens_per_sequence = batch_size, tokens
        self.total_steps = total_steps(cfg)
        M = len(self.members)
        setting, member_steps, device = cfg.training.compile, self.total_steps * M, cfg.training.device
        traceable = all(c.traceable for m in self.members for c in m.clamps)  # else: eager (auto)
        self.compiled = traceable and should_compile(setting, member_steps, device)
        self.kernels = should_compile(setting, member_steps, device, KERNEL_MEMBER_STEPS)
        self.cuda_graphs = self.compiled and cfg.training.cuda_graphs and self.device.type == "cuda"
        self.model = build_model(cfg, self.device, self.tasks[0])  # in eval mode: train_step switches
        self.dropout = cfg.model.drops_out
        self.model.batched(M > 1)
        self.eval_every = run.evaluation_schedule()[1]  # what check_whole expects of the metrics
        every = cfg.checkpointing.every
        self.checkpoint_every = every.to_steps(batch_size, tokens) if every else None
        params = self._init_params()
        exempt = self.model.no_weight_decay()
        if unknown := sorted(exempt - set(params)):
            raise ComponentError(
                f"model {cfg.model.name!r} names {unknown[0]!r} in no_weight_decay(), "
                "a parameter it does not have"
            )
        self.undecayed = [name in exempt for name in params]
        settings = cfg.training.optimizer
        optimizer = build_optimizer(
            list(params.values()), settings, fused=not self.compiled, undecayed=self.undecayed
        )
        self.state = TrainState(
            params,
            optimizer,
            [generator(m.seed, "data", device=self.device) for m in self.members],
            torch.zeros(len(self.members), device=self.device),
        )
        self.clamps = self._clamp_table()
        self.evaluator = Evaluator(
            self.tasks, [batches for _, batches in data], metric_names(cfg, self.model), cfg.eval.with_clamps
        )
        self.logger = MetricsLogger(run.metrics_path, key_metric(cfg))
        self.restored = False
        self.latest_losses: Tensor | None = None
        self._step_clamps: list[Clamp] = []  # the clamps active in the current step
        self._t0 = time.perf_counter()  # wall-clock start (fit() restarts it)
        self._losses = over_members(self._member_loss, M)
        self.compile_s: float | None = None  # time the first compiled step took
        if self.compiled:
            settings = compile_settings(self.device, self.cuda_graphs)
            # fullgraph: a graph break fails the trace, and the run trains eager (_train_eager_from_here)
            self._whole_step = torch.compile(self._whole_step, dynamic=False, fullgraph=True, **settings)
            self._lr = torch.zeros((), device=self.device)  # a tensor: a new rate must not recompile

    # set-up ----------------------------------------------------------------------------

    def _init_params(self) -> dict[str, Tensor]:
        """Each member's weights drawn from its own seed, stacked along axis 0."""
        per_member = []
        for m in self.members:
            self.model.reset_parameters(generator(m.seed, "init", device=self.device))
            per_member.append({k: p.detach().clone() for k, p in self.model.named_parameters()})
        return {k: torch.stack([p[k] for p in per_member]).requires_grad_() for k in per_member[0]}

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
        active = [(c, flags) for c, flags in self.clamps if c.steps.contains(self.state.step)]
        flags = torch.zeros(len(self.members), 0, dtype=torch.bool, device=self.device)
        if active:
            flags = torch.stack([f for _, f in active], dim=1)
        return [c for c, _ in active], flags

    # training --------------------------------------------------------------------------

    @_with_kernels
    def train_step(self) -> None:
        state = self.state
        first, self._values_checked = not self._values_checked, True
        if self._sample_members is not None:
            batch = self._sample_members(self.batch_size, state.data_generators, state.step)
            if first:  # a task class's own sampler: each member's batch checked once, as below
                drew = len(batch.inputs) if isinstance(batch, Batch) else type(batch).__name__
                if drew != len(self.tasks):
                    name = self.tasks[0].config.name
                    raise ComponentError(f"task {name!r} drew {drew} members' batches for {len(self.tasks)}")
                for m, task in enumerate(self.tasks):
                    _whole(batch.member(m), task, self.batch_size, values=True)
        else:
            batch = Batch.stack(
                [
                    _whole(task.training_sample(self.batch_size, g, state.step), task, self.batch_size, first)
                    for task, g in zip(self.tasks, state.data_generators, strict=True)
                ]
            )
        self._step_clamps, on = self._active_clamps()
        if self.cuda_graphs:  # a new step: the graphs may overwrite the outputs of the last one
            torch.compiler.cudagraph_mark_step_begin()
        first_compiled = self.compiled and self.compile_s is None
        started = time.perf_counter()
        lrs = [
            lr_at(state.step, self.total_steps, m.training.optimizer.lr, m.training.schedule)
            for m in self.members
        ]
        # members at different learning rates: step at lr 1, then take each member's fraction of the
        # update (SGD, Adam and AdamW updates, weight decay included, scale linearly with lr)
        same = len(set(lrs)) == 1
        lr = lrs[0] if same else 1.0
        before = None if same else [p.detach().clone() for p in state.params.values()]
        table_rows = batch.table_rows() if self.model.takes_table else {}
        args = (batch.inputs, batch.targets, batch.loss_mask, batch.meta, on, table_rows)
        for group in state.optimizer.param_groups:
            group["lr"] = lr  # what a checkpoint records
        if not self.model.training:  # evaluate_all switched it to eval mode
            self.model.train()
        with self._dropout_masks():
            losses = self._compiled_step(lr, args) if self.compiled else self._eager_step(args)
        if before is not None:
            weight = torch.tensor(lrs, device=self.device)
            with torch.no_grad():
                for old, p in zip(before, state.params.values(), strict=True):
                    p.copy_(torch.lerp(old, p, weight.view(-1, *[1] * (p.dim() - 1))))
        if first_compiled and self.compiled:
            self.compile_s = time.perf_counter() - started
        # a graph's output lives in memory its next replay overwrites: keep a copy
        self.latest_losses = losses.detach().clone() if self.cuda_graphs else losses.detach()
        state.loss_sum += self.latest_losses
        state.loss_count += 1
        state.step += 1

    @contextlib.contextmanager
    def _dropout_masks(self) -> Iterator[None]:
        """With dropout, the step's masks drawn from a stream of the run seed and the step (a resumed
        run draws the same ones), the global generator left as it was; without, nothing."""
        if not self.dropout:
            yield
            return
        with forked_generators(self.device) as masks:
            masks.manual_seed(derive_seed(self.members[0].seed, "dropout", self.state.step))
            yield

    def _member_loss(
        self,
        params: dict,
        inputs: Tensor,
        targets: Tensor,
        mask: Tensor,
        meta: dict,
        on: Tensor,
        table_rows: dict[str, Tensor],
    ) -> Tensor:
        """One member's training loss on its batch, with the step's clamps (flags `on`) applied."""
        return clamped_loss(
            self.model, self.tasks[0], self._step_clamps, params, inputs, targets, mask, meta, on, table_rows
        )

    def _eager_step(self, args: tuple) -> Tensor:
        """The member losses on the step's batch (args) and the clipped update at the optimiser's
        rate: autograd, then its step(). A loss that is not finite stops the run before the update."""
        params = self.state.params
        losses = self._losses(params, *args)
        self._stop_if_diverged(losses)
        for p in params.values():  # what zero_grad(set_to_none=True) does, without its overhead
            p.grad = None
        losses.sum().backward()
        clip = self.run.config.training.grad_clip
        if clip is not None:
            clip_grad_norm_per_member([p.grad for p in params.values() if p.grad is not None], clip)
        self.state.optimizer.step()
        return losses.detach()

    def _compiled_step(self, lr: float, args: tuple) -> Tensor:
        """What _eager_step does, as one compiled graph (_whole_step), which makes no update when a
        loss is not finite."""
        self._lr.fill_(lr)  # in place: the graph reads the rate as a tensor input
        params = {k: p.detach() for k, p in self.state.params.items()}
        state = optimizer_state(self.state.optimizer, list(self.state.params.values()))
        if self.cuda_graphs:  # updated in place by the replayed graph: fixed addresses, not copies
            for t in [*params.values(), *itertools.chain(*state.values())]:
                torch._dynamo.mark_static_address(t, guard=False)  # new views each step: no id guard
        try:
            losses = self._whole_step(params, state, self._lr, *args)
        except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UncapturedHigherOrderOpError) as e:
            # a graph break, refused before anything ran
            return self._train_eager_from_here(e, args)
        self._stop_if_diverged(losses)
        return losses

    def _train_eager_from_here(self, graph_break: Exception, args: tuple) -> Tensor:
        """Train eager from this step on, saying why: the step compiles only as one graph (split,
        a break inside torch.func.grad would leave every later compiled step of the process eager)."""
        reason = graph_break_reason(graph_break)
        warnings.warn(
            f"training.compile: the training step does not compile as one graph ({reason}); "
            f"training eager from step {self.state.step}",
            stacklevel=2,
        )
        self.compiled = self.cuda_graphs = False
        self._record_how_it_trains(compile_refused=reason)
        return self._eager_step(args)

    def _whole_step(
        self, params: dict[str, Tensor], state: dict[str, list[Tensor]], lr: Tensor, *args: Any
    ) -> Tensor:
        """One training step as a function to compile whole: the member losses, their gradients
        (torch.func.grad, no autograd graph), per-member clipping and the optimiser's update of
        `params` and its `state` in place, which keeps both as they were if a loss is not finite."""

        def total(params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            losses = self._losses(params, *args)
            return losses.sum(), losses

        grads, losses = torch.func.grad(total, has_aux=True)(params)
        clip = self.run.config.training.grad_clip
        if clip is not None:
            clip_grad_norm_per_member(list(grads.values()), clip)
        olds = [list(params.values()), *state.values()]
        news = [[t.clone() for t in ts] for ts in olds]  # compiled, the copies cost nothing
        settings, updated = self.run.config.training.optimizer, dict(zip(state, news[1:], strict=True))
        functional_update(settings, news[0], list(grads.values()), updated, lr, self.undecayed)
        finite = torch.isfinite(losses).all()
        for old, new in zip(itertools.chain(*olds), itertools.chain(*news), strict=True):
            old.copy_(torch.where(finite.to(old.device), new, old))
        return losses

    # evaluation ------------------------------------------------------------------------

    @_with_kernels
    @torch.no_grad()
    def evaluate_all(self) -> None:
        """Evaluate every member on every split, log the rows with the mean training loss since
        the last evaluation, and write the metrics table."""
        state, units = self.state, self._units()
        clamps, on = self._active_clamps()
        self.model.eval()  # no dropout; the next train_step switches back
        for m in range(len(self.members)):
            for name, p in self.model.named_parameters():  # the template model takes member m's
                p.copy_(state.params[name][m])
            for split, values in self.evaluator(self.model, m, clamps, on[m]).items():
                self.logger.log(units, m, split, values)
            if state.loss_count:
                self.logger.log(units, m, TRAIN_SPLIT, {"loss": state.loss_sum[m] / state.loss_count})
            plan = self.tasks[m].repetition
            if plan is not None:  # exact data accounting: unique and repeated tokens, bank epochs
                counts = plan.counts(state.step)
                self.logger.log(units, m, TRAIN_SPLIT, {k: torch.tensor(float(v)) for k, v in counts.items()})
        state.loss_sum.zero_()
        state.loss_count = 0
        self.logger.write()

    def _units(self) -> dict[str, Any]:
        sequences, tokens = self.run.units_at(self.state.step)
        wall = self.state.wall_s + time.perf_counter() - self._t0
        return {"step": self.state.step, "sequences": sequences, "tokens": tokens, "wall_s": wall}

    def _stop_if_diverged(self, losses: Tensor) -> None:
        """_diverged unless every member's loss is finite."""
        if not bool(torch.isfinite(losses).all()):
            self._diverged(losses.detach())

    def _diverged(self, losses: Tensor) -> None:
        """Stop on a non-finite loss: checkpoint the last finite parameters (this step's, whose loss
        is the non-finite one, or the latest checkpoint if the last update already made them
        non-finite), mark the run diverged and raise DivergenceError."""
        step = self.state.step
        members = [str(m) for m in torch.nonzero(~torch.isfinite(losses)).flatten().tolist()]
        finite = all(bool(torch.isfinite(p).all()) for p in self.state.params.values())
        if finite:
            self.save()
        saved = step if finite else self.run.checkpoint_steps[-1]
        message = (
            f"run {self.run.id} diverged at step {step}: non-finite training loss "
            f"(member {', '.join(members)}); its last parameters that are all finite (their loss may not "
            f"be) are its checkpoint at step {saved}"
        )
        self.run.update_manifest(status="diverged", diverged_at=step, error=message)
        raise DivergenceError(message)

    def _expected_history(self, upto: int) -> set[int]:
        """The evaluation steps a run's metrics table holds once trained to step `upto`."""
        return evaluation_steps(self.eval_every, upto, self.total_steps)

    def _check_history(self) -> None:
        """RunStoreError unless every member's metrics table has every evaluation step: a run is
        never marked complete with history missing."""
        table = self.logger.rows.table()
        for member in range(len(self.members)):
            have = set(table.filter(pc.equal(table["member"], member))["step"].to_pylist())
            missing = sorted(self._expected_history(self.total_steps) - have)
            if missing:
                raise RunStoreError(
                    f"run {self.run.id}: metrics of member {member} are missing at steps {missing[:5]}"
                )

    # checkpoints -----------------------------------------------------------------------

    def save(self) -> None:
        units = self._units()
        self.state.wall_s = units["wall_s"]
        self._t0 = time.perf_counter()
        tensors, info = self.state.state_dict()
        info |= {
            "config_hash": self.run.config_hash,
            "sequences": units["sequences"],
            "tokens": units["tokens"],
        }
        save_checkpoint(self.run.checkpoint_dir, self.state.step, tensors, info)
        self.run.update_manifest(last_checkpoint=self.state.step)

    def resume_point(self) -> int | None:
        """The latest checkpoint with its metrics history whole (RunDirectory.resume_point)."""
        return self.run.resume_point(self._expected_history, len(self.members))

    def restore(self, step: int) -> None:
        """Continue from the checkpoint at `step` exactly where it was written; later checkpoints,
        which lie past a gap in the metrics history, are removed (training rewrites them)."""
        self.run.drop_checkpoints_after(step)
        try:
            checkpoint = self.run.load_checkpoint(step)
            self.state.load_state_dict(checkpoint)  # a sidecar lacking a field fails here
        except CheckpointError as e:  # say how to fall back, losing the steps since the one before
            earlier = [s for s in self.run.checkpoint_steps if s < step]
            if not earlier:
                raise
            where = self.run.checkpoint_dir
            files = " and ".join(p.name for p in checkpoint_paths(where, step))
            raise CheckpointError(
                f"{e}; to resume from step {earlier[-1]:,} instead, delete {files} in {where}"
            ) from None
        self.logger.restore(self.run.metrics, self.state.step)
        self.restored = True

    # the loop --------------------------------------------------------------------------

    def _record_how_it_trains(self, compile_refused: str | None = None) -> None:
        """The manifest's compiled, compiled_kernels, cuda_graphs, device and compile_refused, as
        from this step on; `segments` keeps each stretch's, since a resume may change them (--device,
        training.compile). A run from before segments gets its first from the manifest's fields."""
        manifest = self.run.manifest
        how = {
            "compiled": self.compiled,
            "compiled_kernels": self.kernels,
            "cuda_graphs": self.cuda_graphs,
            "device": str(self.device),
            **({"compile_refused": compile_refused} if compile_refused else {}),
        }
        earlier = manifest.get("segments")
        if earlier is None and "compiled" in manifest:  # its device was not recorded
            keys = ("compiled", "compiled_kernels", "cuda_graphs", "compile_refused")
            earlier = [{"from_step": 0, **{k: manifest[k] for k in keys if k in manifest}}]
        segments = [s for s in earlier or [] if s["from_step"] < self.state.step]
        manifest.pop("compile_refused", None)  # an earlier stretch's, kept in its segment
        self.run.update_manifest(**how, segments=[*segments, {"from_step": self.state.step, **how}])

    def fit(self) -> Run:
        """Train to the configured length; evaluate at step 0, every eval interval and at the end.
        Holds the run's lock throughout; SIGTERM stops it like Ctrl-C (marked interrupted)."""
        self._t0 = time.perf_counter()
        log_every = self.run.config.training.log_every
        state = self.state
        self.run.acquire()
        self.run.update_manifest(status="running", total_steps=self.total_steps)
        self._record_how_it_trains()
        plans = [_repetition(task) for task in self.tasks]  # members may repeat differently
        if any(plans):
            self.run.update_manifest(repetition=plans[0] if len(plans) == 1 else plans)
        try:
            with (
                on_sigterm(),
                TrainingProgress(self.run.id, self.total_steps, state.step, self.progress) as bar,
            ):
                if not self.restored:  # a fresh start: evaluate and checkpoint the initial model
                    self.evaluate_all()
                    self.save()
                if self.compiled:
                    bar.note("compiling the training step (torch.compile)")
                while state.step < self.total_steps:
                    self.train_step()
                    last = state.step == self.total_steps
                    if state.step % self.eval_every == 0 or last:
                        self.evaluate_all()
                    if last or (self.checkpoint_every and state.step % self.checkpoint_every == 0):
                        self.save()
                    if state.step % log_every == 0 or last:
                        bar.update(state.step, self._status)
            self._check_history()
            compiled = {"compile_s": round(self.compile_s, 2)} if self.compile_s is not None else {}
            finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            rows = self.logger.row_count  # what check_whole expects of the table from now on
            self.run.update_manifest(status="complete", finished=finished, metrics_rows=rows, **compiled)
        except (KeyboardInterrupt, Interrupted) as e:
            self.run.record(status="interrupted", interrupted_at=state.step)
            if isinstance(e, Interrupted):
                e.run_path = self.run.path  # for the command line's one line
            raise
        except DivergenceError:
            raise
        except Exception as e:
            self.run.record_failure(e)
            raise
        finally:
            self.run.release()
        return self.run

    def _status(self) -> str:
        split, key, summary = self.logger.key_metric
        parts = [f"loss {self.latest_losses.mean().item():.3f}"] if self.latest_losses is not None else []
        if self.logger.key_value is not None:
            parts.append(
                f"{split} {key}"
                + (f" ({summary})" if summary != "mean" else "")
                + f" {self.logger.key_value:.3f}"
            )
        return " | ".join(parts)


@contextlib.contextmanager
def on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises Interrupted, so a killed run is marked interrupted as
    Ctrl-C marks it; outside the main thread (no signals there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Interrupted("SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(
    configs: ExperimentConfig | list[ExperimentConfig],
    runs_dir: str = "runs",
    progress: bool = True,
    run_id: str | None = None,
) -> Run:
    """Create a run directory for a validated config (or an ensemble's member configs) and train
    it to completion."""
    members = list(configs) if isinstance(configs, list | tuple) else [configs]
    if not members or not all(isinstance(m, ExperimentConfig) for m in members):
        got = ", ".join(sorted({type(m).__name__ for m in members})) or "nothing"
        raise ConfigError(f"train needs a config, or a list of one or more member configs (got {got})")
    check_ensemble(members)  # before anything is written, and so is the tasks' data (a corpus may
    for member in members:  # be unreadable, a feature file malformed): errors leave no run behind
        build_task(member, device=member.training.device)
    run = Run.create(members, runs_dir, run_id)
    try:
        trainer = Trainer(run, progress)
    except Exception as e:  # e.g. a task whose evaluation batches cannot be drawn: not left "running"
        run.record_failure(e)
        run.release()
        raise
    return trainer.fit()


def resume(run: Run, progress: bool = True, on_step: Callable[[int | None], None] = lambda step: None) -> Run:
    """Continue a run from its latest checkpoint whose metrics history is whole (Trainer.resume_point;
    from the start if it has no checkpoints); on_step hears where it continues from."""
    for config in run.configs:
        check_trainable_here(config, run.id)
    run.check_config()
    run.check_sources()
    run.acquire()  # before anything is read or removed: another process may be training it
    try:
        trainer = Trainer(run, progress)
        step = trainer.resume_point()
        on_step(step)
        if step is not None:
            trainer.restore(step)
    except BaseException:  # e.g. a corrupt checkpoint: the run stays as it was, free to resume later
        run.release()
        raise
    return trainer.fit()
