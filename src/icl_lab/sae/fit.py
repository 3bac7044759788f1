"""The SAE training step and loop on a tensor of activations: Adam, a linear warm-up, the
architecture's gradient and weight constraints, and (relu_l1) dead-feature resampling on its
schedule with the warm-up restarted after each, as Kissane et al. train."""

from dataclasses import dataclass, field

import torch
from torch import Tensor

from icl_lab.sae.base import SAE
from icl_lab.sae.relu_l1 import ReluL1

RESAMPLE_INPUTS = 1 << 14  # inputs whose losses choose the resampled directions


@dataclass
class FitSettings:
    """Kissane et al.'s optimiser: Adam lr 1.2e-3, betas (0, 0.9999), the lr ramping linearly
    from 0.1 x lr over the warm-up (restarted after each resampling)."""

    steps: int
    batch_size: int = 4096
    lr: float = 1.2e-3
    betas: tuple[float, float] = (0.0, 0.9999)
    warmup_steps: int = 1000
    warmup_start: float = 0.1


@dataclass
class FitState:
    """The loop's bookkeeping: steps done, when the warm-up last restarted, resamplings so far,
    and how often each feature fired since the last resampling window began."""

    step: int = 0
    warmup_from: int = 0
    resamplings: int = 0
    fired: Tensor | None = None
    seen: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def learning_rate(settings: FitSettings, state: FitState) -> float:
    """The warm-up's linear ramp from warmup_start x lr to lr, then lr."""
    if settings.warmup_steps == 0:
        return settings.lr
    done = min((state.step - state.warmup_from) / settings.warmup_steps, 1.0)
    return settings.lr * (settings.warmup_start + (1 - settings.warmup_start) * done)


def fit(
    sae: SAE, activations: Tensor, settings: FitSettings, generator: torch.Generator, log_every: int = 100
) -> FitState:
    """Train sae on batches drawn (with replacement) from activations (N, d_in); returns the
    state with a history of the loss terms every log_every steps."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=settings.lr, betas=settings.betas)
    state = FitState(fired=torch.zeros(sae.d_sae, dtype=torch.long))
    sae.train()
    while state.step < settings.steps:
        index = torch.randint(len(activations), (settings.batch_size,), generator=generator)
        batch = activations[index]  # (batch, d_in)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(settings, state)
        out = sae(batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.constrain_gradients()
        optimizer.step()
        sae.constrain_weights()
        state.step += 1
        state.fired += (out.features > 0).sum(0)
        state.seen += len(batch)
        if state.step % log_every == 0 or state.step == settings.steps:
            record = {name: value.item() for name, value in out.losses.items()}
            l0 = (out.features > 0).sum(-1).float().mean().item()
            state.history.append({"step": state.step, **record, "l0": l0})
        _maybe_resample(sae, activations, optimizer, state, generator)
    return state


def _maybe_resample(
    sae: SAE, activations: Tensor, optimizer: torch.optim.Optimizer, state: FitState, g: torch.Generator
) -> None:
    """relu_l1 on its schedule: resample the features that fired at most dead_frequency of the
    inputs since the last resampling, and restart the warm-up."""
    if not isinstance(sae, ReluL1) or sae.config.resample_every is None:
        return
    if state.step % sae.config.resample_every or state.resamplings >= sae.config.resample_times:
        return
    dead = state.fired.double() / max(state.seen, 1) <= sae.config.dead_frequency
    n = min(len(activations), RESAMPLE_INPUTS)
    sample = activations[torch.randint(len(activations), (n,), generator=g)]
    sae.resample(dead, sample, optimizer, g)
    state.resamplings += 1
    state.warmup_from = state.step
    state.fired.zero_()
    state.seen = 0
