"""How good an SAE is on a set of activations: sparsity (L0), reconstruction (MSE, explained
variance), and how often each feature fires (dead and dense fractions, the density histogram)."""

from dataclasses import dataclass

import torch
from torch import Tensor

from icl_lab.sae.base import SAE

DEAD_DENSITY = 1e-6  # Kissane's "dead": firing on at most this share of tokens
DENSE_DENSITY = 0.1  # "dense": firing on more than this share


@dataclass
class SAEQuality:
    """Means over the activations: l0 (features per token), mse (squared error summed over
    dims), explained variance (1 - error / variance around the mean); per-feature firing
    densities (share of tokens), with the dead and dense fractions."""

    l0: float
    mse: float
    explained_variance: float
    density: Tensor
    dead_fraction: float
    dense_fraction: float

    def density_histogram(self, bins: int = 40) -> tuple[Tensor, Tensor]:
        """(counts, edges) of log10 density over live features (dead ones have no log)."""
        live = self.density[self.density > 0].log10()
        low = float(live.min()) if live.numel() else -6.0
        edges = torch.linspace(min(low, -6.0), 0.0, bins + 1)
        return torch.histogram(live.float(), edges).hist, edges


@torch.no_grad()
def sae_quality(sae: SAE, activations: Tensor, chunk: int = 4096) -> SAEQuality:
    """SAEQuality of sae on activations (N, d_in), in chunks of `chunk` rows."""
    fired = torch.zeros(sae.d_sae, device=activations.device)
    l0 = error = 0.0
    for part in activations.split(chunk):
        features = sae.encode(part)
        fired += (features > 0).sum(0)
        l0 += (features > 0).sum().item()
        error += (sae.decode(features) - part).pow(2).sum().item()
    n = len(activations)
    variance = (activations - activations.mean(0)).pow(2).sum().item()
    density = fired / n
    return SAEQuality(
        l0=l0 / n,
        mse=error / n,
        explained_variance=1 - error / variance,
        density=density.cpu(),
        dead_fraction=float((density <= DEAD_DENSITY).float().mean()),
        dense_fraction=float((density > DENSE_DENSITY).float().mean()),
    )
