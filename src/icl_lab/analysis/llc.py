"""The local learning coefficient (LLC) of a model at a checkpoint, estimated by SGLD localised there.

The estimator is Lau et al.'s (2023), as devinterp 1.3 computes it. Chains start at the checkpoint
w* and take SGLD steps on minibatch losses L_B of the run's own training task (with the training
clamps active at that step):

    w <- w - (eps / 2) (nbeta grad L_B(w) + gamma (w - w*)) + sqrt(eps) N(0, I)

After `burn_in` steps, every `every`-th step's minibatch loss (taken before its update) is a draw;
per chain, LLC = nbeta (mean draw loss - L(w*)). L(w*) is the mean over chains of their first
minibatch loss, taken at w* itself. nbeta defaults to 60 (Hoogland et al.'s); null takes batch /
ln(batch), devinterp's default.

Chains are stacked on a leading axis like the members of an ensemble; on a GPU they run vmapped as
one ensemble, on a CPU one after another (where vmap's batching costs more than it saves).
Sanity checks on every estimate: every loss finite, the LLC positive (a negative one means the
checkpoint is not a local minimum at this resolution, or the step is too large), and the trace
stationary (the mean draw loss of the second half of the draws within a quarter of the LLC, or
within three standard errors, of the first half's).
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from icl_lab.config import StrictModel
from icl_lab.errors import ConfigError
from icl_lab.experiment import ExperimentConfig, build_model, build_task
from icl_lab.interventions.base import active_at
from icl_lab.models import MODELS
from icl_lab.seeding import generator
from icl_lab.store.run import Run
from icl_lab.tasks import Batch
from icl_lab.training.trainer import clamped_loss, over_members

ChainLosses = Callable[[dict[str, Tensor], int], Tensor]
"""(chain parameters stacked on axis 0, SGLD step) -> (chains,) minibatch losses"""


class LLCConfig(StrictModel):
    """SGLD settings of the LLC estimator. The defaults of epsilon, gamma and nbeta are Hoogland et
    al.'s for their linear-regression transformer (timaeus-research/icl,
    sweeps/regression/analysis/0-L2H4-llcs-over-time.yaml: noise 0.001, gradient 0.03 and
    localisation 0.003 scales, i.e. eps 1e-3, nbeta 60, gamma 6); they ran 8 chains of 500 draws
    after 500 burn-in steps on batches of 1,024, which the defaults scale down to a CPU's budget."""

    step_size: float = Field(1e-3, gt=0, description="SGLD step size epsilon")
    localization: float = Field(6.0, ge=0, description="strength gamma of the pull back to w*")
    nbeta: float | None = Field(60.0, gt=0, description="inverse temperature n*beta; None: batch / ln(batch)")
    chains: int = Field(4, ge=1)
    draws: int = Field(200, ge=2)
    burn_in: int = Field(100, ge=0, description="SGLD steps before the first draw")
    every: int = Field(1, ge=1, description="SGLD steps between draws")
    batch_size: int | None = Field(None, ge=2, description="SGLD minibatch; None: the run's training batch")
    vmap_chains: bool | None = Field(
        None,
        description="chains vmapped as one ensemble; None: on a GPU only, and never for a model "
        "that cannot run vmapped (LSTM, GRU)",
    )

    def inverse_temperature(self, batch_size: int) -> float:
        return self.nbeta if self.nbeta is not None else batch_size / math.log(batch_size)

    @property
    def steps(self) -> int:
        return self.burn_in + self.draws * self.every


@dataclass(frozen=True)
class LLCEstimate:
    """One checkpoint's estimate: the mean over chains, their spread, and the traces behind it."""

    per_chain: np.ndarray  # (chains,)
    trace: np.ndarray  # (chains, SGLD steps) minibatch losses, burn-in included
    init_loss: float
    nbeta: float
    drift: float  # nbeta (mean of the draws' second half - first half), over chains
    drift_se: float  # its standard error over chains
    seconds: float
    draws_from: int  # the first SGLD step that is a draw
    n_params: int  # a model of d parameters has an LLC of at most d / 2

    @property
    def mean(self) -> float:
        return float(self.per_chain.mean())

    @property
    def std(self) -> float:
        """Spread over chains (0 for one chain)."""
        return float(self.per_chain.std(ddof=1)) if self.per_chain.size > 1 else 0.0

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.trace).all())

    @property
    def stationary(self) -> bool:
        return self.finite and abs(self.drift) <= max(0.25 * abs(self.mean), 3 * self.drift_se)

    def problems(self) -> list[str]:
        """What the sanity checks found (empty: the chains look sane)."""
        if not self.finite:
            return ["a chain diverged (non-finite loss): lower the step size"]
        found = []
        if self.mean <= 0:
            found.append("negative LLC: not a local minimum at this resolution, or the step is too large")
        if self.mean > self.n_params:  # twice the bound: beyond what sampling noise explains
            found.append(
                f"LLC {self.mean:.3g} is over twice its largest possible value (half the {self.n_params:,} "
                "parameters): the chains ran away; lower the step size"
            )
        if not self.stationary:
            found.append(f"the loss trace drifts ({self.drift:+.3g} in LLC units): more burn-in or draws")
        return found


def sgld_llc(
    losses: ChainLosses, center: dict[str, Tensor], config: LLCConfig, nbeta: float, noise: torch.Generator
) -> LLCEstimate:
    """The LLC at `center` (parameters without a chain axis) from SGLD on `losses`."""
    started = time.perf_counter()
    C, eps, gamma = config.chains, config.step_size, config.localization
    anchor = {k: v.detach().unsqueeze(0).expand(C, *v.shape) for k, v in center.items()}
    params = {k: v.clone().requires_grad_() for k, v in anchor.items()}  # (C, *shape) each
    trace = torch.empty(C, config.steps)
    for t in range(config.steps):
        loss = losses(params, t)  # (C,)
        trace[:, t] = loss.detach()
        if not bool(torch.isfinite(loss).all()):
            trace[:, t + 1 :] = float("nan")
            break
        grads = torch.autograd.grad(loss.sum(), list(params.values()))
        with torch.no_grad():
            for (k, p), g in zip(params.items(), grads, strict=True):
                p.sub_(0.5 * eps * (nbeta * g + gamma * (p - anchor[k])))
                p.add_(torch.randn(p.shape, generator=noise, device=p.device, dtype=p.dtype), alpha=eps**0.5)
    trace_np = trace.numpy().astype(float)
    draws = trace_np[:, config.burn_in :][:, config.every - 1 :: config.every]  # (C, draws)
    init_loss = float(trace_np[:, 0].mean())
    half = draws.shape[1] // 2
    drifts = nbeta * (draws[:, half:].mean(1) - draws[:, :half].mean(1))
    return LLCEstimate(
        per_chain=nbeta * (draws.mean(1) - init_loss),
        trace=trace_np,
        init_loss=init_loss,
        nbeta=nbeta,
        drift=float(drifts.mean()),
        drift_se=float(drifts.std(ddof=1) / math.sqrt(C)) if C > 1 else float("inf"),
        seconds=time.perf_counter() - started,
        draws_from=config.burn_in + config.every - 1,
        n_params=sum(v.numel() for v in center.values()),
    )


def _chain_by_chain(single: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The chains' losses one chain at a time (on a CPU, vmap's batching of a small model costs
    about twice a loop: benchmarks/llc_throughput.py)."""

    def losses(*args: Any) -> Tensor:
        return torch.cat([single(*(_chain(a, c) for a in args)) for c in range(len(args[1]))])

    return losses


def _chain(x: Any, c: int) -> Any:
    """Chain c of a stacked argument, its leading axis kept."""
    return {k: _chain(v, c) for k, v in x.items()} if isinstance(x, dict) else x[c : c + 1]


def vmap_chains(config: LLCConfig, member_config: ExperimentConfig, device: str) -> bool:
    """Whether the chains run vmapped as one ensemble: as `vmap_chains` says, by default on a GPU
    unless the model cannot run vmapped (LSTM, GRU); ConfigError if asked for such a model."""
    model = member_config.model
    refusal = MODELS.get(model.name).ensemble_refusal(model) if config.chains > 1 else None
    if config.vmap_chains and refusal:
        raise ConfigError(f"llc.vmap_chains: {refusal}; set it false to run the chains one by one")
    default = device != "cpu" and refusal is None
    return config.chains > 1 and (config.vmap_chains if config.vmap_chains is not None else default)


def run_llc(
    run: Run, step: int, config: LLCConfig, member: int | None = None, device: str = "cpu"
) -> LLCEstimate:
    """The LLC of one member of a run at one checkpoint, on the member's own training task and
    training clamps; the chains' data and noise come from the member's seed, the step and a
    purpose of their own (never the training stream)."""
    member = run.member if member is None else member
    member_config = run.member_config(member)
    task = build_task(member_config, device=device)  # its sampler only: no evaluation batches
    model = build_model(member_config, device, task)  # eval mode: no dropout in the chains' loss
    for module in model.modules():  # but cuDNN differentiates RNNs in training mode only (dropout 0)
        if isinstance(module, torch.nn.RNNBase):
            module.train()
    center = {k: v[member].to(device) for k, v in run.parameters(step).items()}
    clamps = active_at(member_config.clamps, step)
    batch_size = config.batch_size or member_config.training.batch_size
    seed = member_config.seed
    data = [generator(seed, "llc", step, chain, device=device) for chain in range(config.chains)]
    on = torch.ones(config.chains, len(clamps), dtype=torch.bool, device=device)
    vmapped = vmap_chains(config, member_config, device)
    model.batched(vmapped)

    def one(params: dict, inputs: Tensor, targets: Tensor, mask: Tensor, meta: dict, flags: Tensor) -> Tensor:
        return clamped_loss(model, task, clamps, params, inputs, targets, mask, meta, flags)

    chain_losses = over_members(one, config.chains) if vmapped else _chain_by_chain(over_members(one, 1))

    def losses(params: dict[str, Tensor], t: int) -> Tensor:
        batch = Batch.stack([task.training_sample(batch_size, g, step) for g in data])
        return chain_losses(params, batch.inputs, batch.targets, batch.loss_mask, batch.meta, on)

    noise = generator(seed, "llc-noise", step, device=device)
    return sgld_llc(losses, center, config, config.inverse_temperature(batch_size), noise)
