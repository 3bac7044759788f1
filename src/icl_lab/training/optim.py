"""Optimisers, learning-rate schedules and per-member gradient clipping."""

import math

import torch
from torch import Tensor

from icl_lab.config import OptimizerConfig, ScheduleConfig


def build_optimizer(params: list[Tensor], cfg: OptimizerConfig, fused: bool = False) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW over the given leaf tensors. `fused`: Adam's and AdamW's
    one-kernel update (the same update up to rounding, in about half the time of the per-tensor
    one on a CPU), for steps that are not compiled (a compiled step fuses the update itself)."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    optimizer = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return optimizer(
        params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=fused or None
    )


def lr_at(step: int, total_steps: int, lr: float, cfg: ScheduleConfig) -> float:
    """Learning rate for the update taken at `step` (0-based): linear warm-up, then constant or
    cosine decay to min_lr_ratio * lr at the last step."""
    if step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    if cfg.name != "cosine":
        return lr
    progress = (step - cfg.warmup_steps) / max(1, total_steps - 1 - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def clip_grad_norm_per_member(params: list[Tensor], max_norm: float) -> Tensor:
    """Clip each ensemble member's gradient (axis 0 of every parameter) to a global L2 norm of at
    most max_norm, as torch.nn.utils.clip_grad_norm_ does for one model; returns the norms (M,)."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()  # (M,)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
    return norms
