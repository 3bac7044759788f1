"""Function classes in context (Garg et al. 2022) and sliding-window sequential functions
(Campbell et al. 2023).

A prompt holds n_points pairs (x_i, f(x_i)) of one random function f, as tokens that alternate x_i
and (y_i, 0, ..., 0); the model predicts y_i at each x_i's position from the pairs before it, so
one prompt scores every prefix length k = 0 .. n_points - 1. x ~ N(0, I_d). Classes (each scaled
so that y has variance about d, like the linear class, and errors divided by d are comparable):

- linear: y = w.x, w ~ N(0, I); noisy_linear adds N(0, noise_std^2); sparse_linear keeps `sparsity`
  random coordinates of w; linear_classification: y = sign(w.x);
- quadratic: y = w.(x^2) / sqrt(3);
- relu_net: y = sum_j a_j relu(W_j.x), `hidden` units, W ~ N(0, 1), a ~ N(0, 2 / hidden);
- decision_tree: a complete tree of `depth` splits on the sign of a random coordinate, leaves
  ~ N(0, d) (Garg et al. split at 0 on standard normal inputs);
- sliding_window: y_i = sum_{j < window} W_j.x_{i-j} / sqrt(window), W_j ~ N(0, I) (inputs before
  the prompt count as zero).

`label_randomisation` replaces each label, in context and as a target, with probability p by a
draw from N(0, d). `active_dims` zeroes all but the first coordinates of x; `dims_curriculum` and
`points_curriculum` grow the active dims and the pairs that carry loss during training (Garg et
al.: dims 5 -> 20 and points 11 -> 41, every 2,000 steps). `n_tasks` draws the functions from a
finite pool fixed by the seed. Evaluation splits: `train` (this distribution), and
out-of-distribution variants of it: `clean` (no label noise or randomisation), `scaled_x` /
`scaled_y` (inputs / outputs times `ood_scale`), `skewed` (x ~ N(0, S) with S's eigenvalues
decaying as 1/i, rescaled to trace d), `orthogonal` (context inputs in a random d/2-dimensional
subspace, the last input in its orthogonal complement) and `noisy_labels` (context labels plus
N(0, d / 4)). A batch's meta holds the inputs `xs` and the labels shown in the prompt `ys`; its
targets are the labels scored (they differ only in `noisy_labels`).
"""

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from icl_lab.config import StrictModel, TaskConfig
from icl_lab.models.base import ModelIO
from icl_lab.seeding import generator as seeded
from icl_lab.tasks.base import TASKS, Batch, Sampler, Task

if TYPE_CHECKING:
    from icl_lab.store.run import Run

FunctionClass = Literal[
    "linear",
    "sparse_linear",
    "linear_classification",
    "noisy_linear",
    "quadratic",
    "relu_net",
    "decision_tree",
    "sliding_window",
]
OOD_SPLITS = ("clean", "scaled_x", "scaled_y", "skewed", "orthogonal", "noisy_labels")


class Curriculum(StrictModel):
    """A value that grows during training: start, plus increment every `every` steps, up to end."""

    start: int = Field(ge=1)
    end: int = Field(ge=1)
    increment: int = Field(1, ge=1)
    every: int = Field(2000, ge=1, description="steps")

    def at(self, step: int) -> int:
        return min(self.end, self.start + self.increment * (step // self.every))


class FunctionClassesConfig(TaskConfig):
    """Regression (or classification) of a random function from the pairs in the prompt."""

    name: Literal["function_classes"] = "function_classes"
    function: FunctionClass = "linear"
    dim: int = Field(20, ge=1)
    n_points: int = Field(41, ge=2, description="(x, y) pairs per prompt")
    active_dims: int | None = Field(None, ge=1, description="non-zero input coordinates (curriculum)")
    sparsity: int = Field(3, ge=1)
    noise_std: float = Field(1.0, ge=0.0, description="label noise of noisy_linear")
    hidden: int = Field(100, ge=1)
    depth: int = Field(4, ge=1)
    window: int = Field(3, ge=1)
    label_randomisation: float = Field(0.0, ge=0.0, le=1.0)
    n_tasks: int | None = Field(
        None, ge=1, description="finite pool of functions (None: a new one each time)"
    )
    dims_curriculum: Curriculum | None = Field(None, description="active input dims during training")
    points_curriculum: Curriculum | None = Field(None, description="pairs that carry loss during training")
    ood_scale: float = Field(2.0, gt=0.0)
    splits: list[Literal["train", *OOD_SPLITS]] = Field(default_factory=lambda: ["train", *OOD_SPLITS])

    @model_validator(mode="after")
    def _check(self) -> "FunctionClassesConfig":
        if self.active_dims is not None and self.active_dims > self.dim:
            raise ValueError(f"active_dims ({self.active_dims}) exceeds dim ({self.dim})")
        if self.function == "sparse_linear" and self.sparsity > self.dim:
            raise ValueError(f"sparsity ({self.sparsity}) exceeds dim ({self.dim})")
        for name, limit in (("dims_curriculum", self.dim), ("points_curriculum", self.n_points)):
            stages = getattr(self, name)
            if stages is not None and not stages.start <= stages.end <= limit:
                raise ValueError(f"{name} must run from start to end within 1..{limit}")
        return self


def interleave(xs: Tensor, ys: Tensor) -> Tensor:
    """xs (B, K, d), ys (B, K) -> tokens (B, 2K, d): x_1, (y_1, 0..), x_2, (y_2, 0..), ..."""
    y_tokens = torch.zeros_like(xs)
    y_tokens[..., 0] = ys
    return torch.stack([xs, y_tokens], 2).flatten(1, 2)


def sliding_windows(x: Tensor, window: int) -> Tensor:
    """x (B, K, d) -> (B, K, d, window): at i, x_{i-window+1} .. x_i (zeros before the prompt)."""
    padded = torch.cat([x.new_zeros(x.shape[0], window - 1, x.shape[2]), x], 1)
    return padded.unfold(1, window, 1)


class FunctionSampler:
    """Random functions of one class, as parameter tensors, and their values on inputs."""

    def __init__(self, c: FunctionClassesConfig) -> None:
        self.c = c

    def draw(self, n: int, g: torch.Generator) -> dict[str, Tensor]:
        """Parameters of n functions."""
        c, dev = self.c, g.device
        if c.function == "relu_net":
            return {
                "W": torch.randn(n, c.hidden, c.dim, generator=g, device=dev),
                "a": torch.randn(n, c.hidden, generator=g, device=dev) * math.sqrt(2 / c.hidden),
            }
        if c.function == "decision_tree":
            return {
                "coords": torch.randint(c.dim, (n, 2**c.depth - 1), generator=g, device=dev),
                "leaves": torch.randn(n, 2**c.depth, generator=g, device=dev) * math.sqrt(c.dim),
            }
        if c.function == "sliding_window":
            return {"W": torch.randn(n, c.window, c.dim, generator=g, device=dev)}
        w = torch.randn(n, c.dim, generator=g, device=dev)
        if c.function == "sparse_linear":
            keep = torch.rand(n, c.dim, generator=g, device=dev).argsort(-1)[:, : c.sparsity]
            w = w * torch.zeros_like(w).scatter_(1, keep, 1.0)
        return {"w": w}

    def __call__(self, params: dict[str, Tensor], x: Tensor, g: torch.Generator) -> Tensor:
        """f(x) for x (B, K, d) -> (B, K)."""
        c = self.c
        if c.function == "relu_net":
            return torch.einsum("bh,bkh->bk", params["a"], torch.relu(x @ params["W"].transpose(1, 2)))
        if c.function == "decision_tree":
            node = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
            for _ in range(c.depth):
                coord = params["coords"].gather(1, node)
                right = x.gather(2, coord[..., None])[..., 0] > 0
                node = 2 * node + 1 + right.long()
            return params["leaves"].gather(1, node - (2**c.depth - 1))
        if c.function == "sliding_window":
            windows = sliding_windows(x, c.window)
            return torch.einsum("bkdj,bjd->bk", windows, params["W"].flip(1)) / math.sqrt(c.window)
        w = params["w"]
        if c.function == "quadratic":
            return torch.einsum("bkd,bd->bk", x**2, w) / math.sqrt(3)
        y = torch.einsum("bkd,bd->bk", x, w)
        if c.function == "linear_classification":
            return y.sign()
        if c.function == "noisy_linear":
            return y + torch.randn(y.shape, generator=g, device=y.device) * c.noise_std
        return y


@TASKS.register("function_classes")
class FunctionClassesTask(Task):
    """Predict f(x_i) at every x_i from the (x, f(x)) pairs before it."""

    Config = FunctionClassesConfig
    config: FunctionClassesConfig
    default_metrics = ("loss",)
    loss_unit = "squared error"
    meta_keys = ("w", "xs", "ys")
    target_kind = "values"

    def __init__(self, config: FunctionClassesConfig, seed: int, device: torch.device | str = "cpu") -> None:
        super().__init__(config, seed, device)
        self.functions = FunctionSampler(config)
        self.pool = (
            self.functions.draw(config.n_tasks, seeded(seed, "function_classes", "pool", device=self.device))
            if config.n_tasks
            else None
        )

    def report_figures(self, run: "Run", out: Path) -> dict[str, bytes]:
        """The error against in-context examples, beside the regression baselines, on every split."""
        from icl_lab.analysis.function_classes import error_curves_png  # analysis reads runs of tasks

        return {"Error against in-context examples": error_curves_png(run, out / "error_curves.png")}

    @classmethod
    def io(cls, config: FunctionClassesConfig) -> ModelIO:
        positions = tuple(range(0, 2 * config.n_points, 2))
        return ModelIO(n_ctx=2 * config.n_points, d_out=1, d_input=config.dim, target_positions=positions)

    @classmethod
    def split_names(cls, config: FunctionClassesConfig) -> list[str]:
        return list(config.splits)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._sample(batch_size, generator, "train")

    def unique_sample(self, batch_size: int, generator: torch.Generator, step: int) -> Batch:
        """With curricula: only the first dims of x are non-zero and only the first pairs carry loss
        (attention is causal, so later pairs do not change earlier predictions)."""
        c = self.config
        dims = c.dims_curriculum.at(step) if c.dims_curriculum else None
        points = c.points_curriculum.at(step) if c.points_curriculum else c.n_points
        return self._sample(batch_size, generator, "train", dims, points)

    def eval_splits(self) -> dict[str, Sampler]:
        return {split: (lambda n, g, split=split: self._sample(n, g, split)) for split in self.config.splits}

    def _inputs(self, n: int, g: torch.Generator, split: str, dims: int | None) -> Tensor:
        c, dev = self.config, g.device
        x = torch.randn(n, c.n_points, c.dim, generator=g, device=dev)
        if split == "scaled_x":
            x = x * c.ood_scale
        elif split == "skewed":
            scales = 1 / torch.arange(1, c.dim + 1, device=dev, dtype=x.dtype)
            rotation = torch.linalg.qr(torch.randn(c.dim, c.dim, generator=g, device=dev))[0]
            x = (x * (scales * c.dim / scales.sum()).sqrt()) @ rotation.T
        elif split == "orthogonal":
            basis = torch.linalg.qr(torch.randn(n, c.dim, c.dim, generator=g, device=dev))[0]
            half = c.dim // 2
            inside = basis[..., :half] @ basis[..., :half].transpose(1, 2)  # projection on the subspace
            x = torch.cat([x[:, :-1] @ inside, x[:, -1:] @ (torch.eye(c.dim, device=dev) - inside)], 1)
        active = min(d for d in (c.active_dims, dims, c.dim) if d is not None)
        x[..., active:] = 0
        return x

    def _sample(
        self, n: int, g: torch.Generator, split: str, dims: int | None = None, points: int | None = None
    ) -> Batch:
        c, dev = self.config, g.device
        x = self._inputs(n, g, split, dims)
        if self.pool is None:
            params = self.functions.draw(n, g)
        else:
            which = torch.randint(c.n_tasks, (n,), generator=g, device=dev)
            params = {k: v[which] for k, v in self.pool.items()}
        y = self.functions(params, x, g)
        if c.function == "noisy_linear" and split == "clean":
            y = torch.einsum("bkd,bd->bk", x, params["w"])
        if split == "scaled_y":
            y = y * c.ood_scale
        if c.label_randomisation and split != "clean":
            swap = torch.rand(y.shape, generator=g, device=dev) < c.label_randomisation
            y = torch.where(swap, torch.randn(y.shape, generator=g, device=dev) * math.sqrt(c.dim), y)
        shown = y
        if split == "noisy_labels":
            shown = y + torch.randn(y.shape, generator=g, device=dev) * math.sqrt(c.dim / 4)
        mask = (torch.arange(c.n_points, device=dev) < (points or c.n_points)).expand(n, -1)
        return Batch(interleave(x, shown), y, mask, {"xs": x, "ys": shown, **params})

    def token_loss(self, output_logits: Tensor, targets: Tensor) -> Tensor:
        """Squared error per prediction (B, n_points); divided by d it is Garg et al.'s error."""
        return (output_logits[..., 0] - targets) ** 2
