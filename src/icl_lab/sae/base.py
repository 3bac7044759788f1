"""What a sparse autoencoder is: an encoder to a wide, sparse feature layer and a linear decoder.

x_bar = x - b_dec (pre-encoder bias subtraction); pre = x_bar W_enc + b_enc; f = act(pre);
x_hat = f W_dec + b_dec. Weights use SAELens's names and layouts (W_enc (d_in, d_sae), W_dec
(d_sae, d_in)), so an SAE exports as it is. Each architecture is one file in sae/ that registers
a subclass with its config: the activation, its training losses, and any constraint on the
weights or the gradients around an optimiser step.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from icl_lab import seeding
from icl_lab.config import StrictModel
from icl_lab.registry import Registry
from icl_lab.sae.sparse_product import sparse_product


class SAEConfig(StrictModel):
    """Base of every architecture's config; `architecture` selects the registered class."""

    architecture: str
    expansion: PositiveInt = Field(32, description="d_sae = expansion x d_in (Kissane: 32)")
    d_in: PositiveInt | None = Field(
        None, description="expected input width (n_heads x d_head), checked against the hook if given"
    )

    def width_problem(self, d_in: int) -> str | None:
        """Why this config cannot make a sparse code of inputs d_in wide, if it cannot."""
        return None


@dataclass
class SAEOutput:
    """A forward pass: reconstruction (N, d_in), features (N, d_sae), and the named loss terms
    (0-d tensors) whose sum is the training loss."""

    reconstruction: Tensor
    features: Tensor
    losses: dict[str, Tensor]

    @property
    def loss(self) -> Tensor:
        return sum(self.losses.values())


class SAE(nn.Module):
    """Base of every architecture: weights, encoder and decoder; subclasses give `activation` and
    may add loss terms, weight constraints and gradient constraints."""

    Config: ClassVar[type[SAEConfig]]
    unit_norm_decoder: ClassVar[bool] = True
    """decoder rows kept at unit norm: the gradient's parallel component removed before a step,
    rows renormalised after it"""
    sparse_gradient: ClassVar[bool] = True
    """the activation's backward reads the features' gradient only where they are non-zero (true of
    ReLU and TopK, not of JumpReLU's threshold), so training may decode the non-zero ones alone"""

    def __init__(self, config: SAEConfig, d_in: int, generator: torch.Generator) -> None:
        super().__init__()
        self.config, self.d_in, self.d_sae = config, d_in, config.expansion * d_in
        W_enc, W_dec = self.initial_weights(generator)
        self.W_enc = nn.Parameter(W_enc)  # (d_in, d_sae)
        self.W_dec = nn.Parameter(W_dec)  # (d_sae, d_in), unit rows
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def initial_weights(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(W_enc, W_dec) at initialisation: unit-norm random decoder rows and the encoder as the
        decoder's transpose (TopK's, BatchTopK's and JumpReLU's papers); an architecture may differ."""
        decoder = torch.randn(self.d_sae, self.d_in, generator=generator)
        decoder /= decoder.norm(dim=1, keepdim=True)
        return decoder.T.clone(), decoder

    def pre_activation(self, x: Tensor) -> Tensor:
        """(N, d_sae) encoder pre-activations of (N, d_in) inputs: (x - b_dec) W_enc + b_enc."""
        # b_dec's share as one vector: autograd then needs no (N, d_in) gradient of x - b_dec, a
        # matrix product as large as the encoder's own
        return x @ self.W_enc + (self.b_enc - self.b_dec @ self.W_enc)

    def activation(self, pre: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """(N, d_sae) feature activations."""
        return self.activation(self.pre_activation(x))

    def decode(self, features: Tensor) -> Tensor:
        """(N, d_in) reconstruction."""
        sparse = None
        if self.sparse_gradient or not torch.is_grad_enabled():
            sparse = sparse_product(features, self.W_dec)
        return (features @ self.W_dec if sparse is None else sparse) + self.b_dec

    def forward(self, x: Tensor) -> SAEOutput:
        pre = self.pre_activation(x)
        features = self.activation(pre)
        reconstruction = self.decode(features)
        mse = (reconstruction - x).pow(2).sum(-1).mean()  # summed over dims, mean over the batch
        losses = {"mse": mse, **self.penalties(x, pre, features, reconstruction)}
        return SAEOutput(reconstruction, features, losses)

    def penalties(self, x: Tensor, pre: Tensor, f: Tensor, x_hat: Tensor) -> dict[str, Tensor]:
        """Loss terms besides the reconstruction error (none by default)."""
        return {}

    @torch.no_grad()
    def constrain_gradients(self) -> None:
        """Before an optimiser step: remove from each decoder row's gradient its component along
        the row, so that the step moves the row (to first order) along the unit sphere."""
        if self.unit_norm_decoder and self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)  # (d_sae, 1)
            self.W_dec.grad -= parallel * self.W_dec

    @torch.no_grad()
    def constrain_weights(self) -> None:
        """After an optimiser step: decoder rows back to unit norm."""
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-12)


SAES: Registry[type[SAE]] = Registry("SAE architecture")


def build_sae(config: SAEConfig, d_in: int, seed: int) -> SAE:
    """The registered architecture of config, for inputs of d_in, initialised from seed."""
    return SAES.get(config.architecture)(config, d_in, seeding.generator(seed, "sae", "init"))
