"""The SAE training step: Adam, a warm-up, the architecture's gradient and weight
constraints, and (relu_l1) dead-feature resampling on its schedule with the warm-up restarted after
each, as Kissane et al. train. `Fitter` holds the loop's state and writes it into a checkpoint."""

import math
from typing import Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor

from icl_lab.config import Beta, StrictModel
from icl_lab.sae.base import SAE, SAEOutput
from icl_lab.sae.relu_l1 import ReluL1
from icl_lab.store.checkpoints import Checkpoint
from icl_lab.store.train_state import load_optimizer, optimizer_tensors

RESAMPLE_INPUTS = 1 << 14  # inputs whose losses choose the resampled directions


class FitSettings(StrictModel):
    """Kissane et al.'s optimiser: Adam lr 1.2e-3, betas (0, 0.9999), the lr ramping from 0.1 x lr
    over the warm-up (restarted after each resampling), linearly or, as their train.py does, along
    half a cosine. Batches are drawn uniformly, with replacement, from the shuffled activation buffer."""

    steps: PositiveInt
    batch_size: PositiveInt = 4096
    lr: PositiveFloat = 1.2e-3
    betas: tuple[Beta, Beta] = Field(
        (0.0, 0.9999), strict=False, description="Adam betas (Kissane: 0, 0.9999)"
    )
    warmup_steps: NonNegativeInt = 1000
    warmup_start: float = Field(0.1, ge=0, le=1, description="the warm-up starts at this fraction of lr")
    warmup_shape: Literal["linear", "cosine"] = Field(
        "linear",
        description="the warm-up's ramp: linear, or cosine (half a cosine from its minimum, as "
        "Kissane et al.'s train.py steps a CosineAnnealingLR to eta_min before training and after "
        "each resampling)",
    )
    later_fields = ("warmup_shape",)  # 2026-12-05


class Fitter:
    """One SAE's optimiser and loop state: steps done, when the warm-up last restarted, resamplings
    so far, and how often each feature fired since the last resampling window began."""

    def __init__(self, sae: SAE, settings: FitSettings, generator: torch.Generator) -> None:
        self.sae, self.settings, self.generator = sae, settings, generator
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=settings.lr, betas=settings.betas, fused=True)
        self.step, self.warmup_from, self.resamplings, self.seen = 0, 0, 0, 0
        self.fired = torch.zeros(sae.d_sae, dtype=torch.long, device=generator.device)
        self.l0 = torch.tensor(float("nan"))

    def learning_rate(self) -> float:
        """The warm-up's ramp (linear or half a cosine) from warmup_start x lr to lr, then lr."""
        s = self.settings
        if s.warmup_steps == 0:
            return s.lr
        done = min((self.step - self.warmup_from) / s.warmup_steps, 1.0)
        if s.warmup_shape == "cosine":
            done = (1 - math.cos(math.pi * done)) / 2
        return s.lr * (s.warmup_start + (1 - s.warmup_start) * done)

    def train_step(self, activations: Tensor) -> SAEOutput:
        """One optimiser step on a batch drawn from activations (N, d_in); resamples when due."""
        sae = self.sae
        batch = (self.settings.batch_size,)
        index = torch.randint(len(activations), batch, generator=self.generator, device=activations.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        out = sae(activations[index])
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.constrain_gradients()
        self.optimizer.step()
        sae.constrain_weights()
        self.step += 1
        # (d_sae,) one pass gives firing and L0; bool() then sum is faster than count_nonzero
        counts = out.features.bool().sum(0)
        self.fired += counts
        self.l0 = counts.sum() / len(index)  # features active per input in this batch
        self.seen += len(index)
        self._maybe_resample(activations)
        return out

    def _maybe_resample(self, activations: Tensor) -> None:
        """relu_l1 on its schedule: resample the features that fired at most dead_frequency of the
        inputs since the last resampling, and restart the warm-up."""
        sae = self.sae
        if not isinstance(sae, ReluL1) or sae.config.resample_every is None:
            return
        if self.step % sae.config.resample_every or self.resamplings >= sae.config.resample_times:
            return
        dead = self.fired.double() / max(self.seen, 1) <= sae.config.dead_frequency
        n = min(len(activations), RESAMPLE_INPUTS)
        sample = activations[
            torch.randint(len(activations), (n,), generator=self.generator, device=activations.device)
        ]
        sae.resample(dead, sample, self.optimizer, self.generator)
        self.resamplings += 1
        self.warmup_from = self.step
        self.fired.zero_()
        self.seen = 0

    def state_dict(self) -> tuple[dict[str, Tensor], dict]:
        """(tensors, JSON-able info) of everything a resumed fit needs to continue bit-identically."""
        tensors = {f"param/{k}": v for k, v in self.sae.state_dict().items()}
        optim, param_groups = optimizer_tensors(self.optimizer)
        tensors |= optim | {"rng/fit": self.generator.get_state(), "fit/fired": self.fired}
        info = {
            "param_groups": param_groups,
            "warmup_from": self.warmup_from,
            "resamplings": self.resamplings,
            "seen": self.seen,
        }
        return tensors, info

    def load_state_dict(self, checkpoint: Checkpoint) -> None:
        self.sae.load_state_dict(checkpoint.group("param"))
        load_optimizer(self.optimizer, checkpoint, self.fired.device)
        self.generator.set_state(checkpoint.tensors["rng/fit"])
        self.fired.copy_(checkpoint.tensors["fit/fired"])
        self.step = checkpoint.step
        self.warmup_from, self.resamplings, self.seen = (
            checkpoint.info[k] for k in ("warmup_from", "resamplings", "seen")
        )


def fit(
    sae: SAE, activations: Tensor, settings: FitSettings, generator: torch.Generator, log_every: int = 100
) -> tuple[Fitter, list[dict[str, float]]]:
    """Train sae on activations (N, d_in) for settings.steps; returns the fitter and the loss terms
    and L0 of the training batch every log_every steps."""
    fitter, history = Fitter(sae, settings, generator), []
    sae.train()
    while fitter.step < settings.steps:
        out = fitter.train_step(activations)
        if fitter.step % log_every == 0 or fitter.step == settings.steps:
            record = {name: value.item() for name, value in out.losses.items()}
            history.append({"step": fitter.step, **record, "l0": fitter.l0.item()})
    return fitter, history
