"""Optimisers, learning-rate schedules and per-member gradient clipping."""

import math

import torch
from torch import Tensor
from torch.optim.adam import adam
from torch.optim.sgd import sgd

from icl_lab.config import OptimizerConfig, ScheduleConfig


def build_optimizer(
    params: list[Tensor], cfg: OptimizerConfig, fused: bool = False, undecayed: list[bool] | None = None
) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW over the given leaf tensors. `fused`: Adam's and AdamW's
    one-kernel update (the same update up to rounding, in about half the time of the per-tensor
    one on a CPU), for steps that are not compiled (a compiled step fuses the update itself).
    Unfused on a GPU, Adam is `capturable`: its step counts live there, so that a compiled step
    (and its CUDA graphs) reads and updates no CPU tensor. `undecayed` flags the parameters that
    take no weight decay: a second param group, after the first."""
    groups: list = params
    if undecayed and any(undecayed):
        groups = [
            {"params": [p for p, u in zip(params, undecayed, strict=True) if not u]},
            {"params": [p for p, u in zip(params, undecayed, strict=True) if u], "weight_decay": 0.0},
        ]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    optimizer = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    capturable = not fused and params[0].is_cuda
    return optimizer(
        groups,
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=fused or None,
        capturable=capturable,
    )


def lr_at(step: int, total_steps: int, lr: float, cfg: ScheduleConfig) -> float:
    """Learning rate for the update taken at `step` (0-based): linear warm-up (from
    cfg.warmup_start, or lr / warmup_steps), then constant or cosine decay to min_lr_ratio * lr,
    reached at the last step (or, decaying over the whole run as timm does, one step after it)."""
    if cfg.name == "constant":
        return lr
    if step < cfg.warmup_steps:
        if cfg.warmup_start is None:
            return lr * (step + 1) / cfg.warmup_steps
        return cfg.warmup_start + step * (lr - cfg.warmup_start) / cfg.warmup_steps
    if cfg.name != "cosine":
        return lr
    if cfg.decay_over == "whole_run":
        progress = step / total_steps
    else:
        progress = (step - cfg.warmup_steps) / max(1, total_steps - 1 - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def clip_grad_norm_per_member(grads: list[Tensor], max_norm: float) -> Tensor:
    """Clip each ensemble member's gradient (axis 0 of every parameter's gradient) to a global L2
    norm of at most max_norm, in place, as torch.nn.utils.clip_grad_norm_ does for one model;
    returns the norms (M,)."""
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()  # (M,)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
    return norms


def optimizer_state(optimizer: torch.optim.Optimizer, params: list[Tensor]) -> dict[str, list[Tensor]]:
    """The optimiser's state tensors of `params` (in that order) by name (Adam: step, exp_avg,
    exp_avg_sq; SGD with momentum: momentum_buffer), created as its first step() creates them where
    it has none yet."""
    group = optimizer.param_groups[0]  # the groups differ in weight decay only
    names = (
        ["momentum_buffer"] if isinstance(optimizer, torch.optim.SGD) else ["step", "exp_avg", "exp_avg_sq"]
    )
    if isinstance(optimizer, torch.optim.SGD) and not group["momentum"]:
        return {}
    for p in params:
        state = optimizer.state[p]
        if not state:
            # SGD's first step copies the gradient into its buffer: momentum x 0 + gradient is the same
            state.update({name: torch.zeros_like(p) for name in names})
            if "step" in names:  # as Adam's _init_group makes it: on the CPU unless capturable
                on_device = group["capturable"] or group["fused"]
                state["step"] = torch.zeros((), device=p.device) if on_device else torch.tensor(0.0)
    return {name: [optimizer.state[p][name] for p in params] for name in names}


def functional_update(
    cfg: OptimizerConfig,
    params: list[Tensor],
    grads: list[Tensor],
    state: dict[str, list[Tensor]],
    lr: Tensor | float,
    undecayed: list[bool] | None = None,
) -> None:
    """The update the step() of build_optimizer(params, cfg, undecayed=undecayed) makes at rate
    `lr`, in place on `params` and `state` (optimizer_state's lists or copies of them), through
    torch.optim's own functional kernels: traceable into one graph with the gradients (step()
    breaks a compiled graph twice). It reads the config, not the optimiser, whose learning rate a
    compiled graph would guard on."""
    undecayed = undecayed or [False] * len(params)
    for skip in (False, True):
        picked = [i for i, u in enumerate(undecayed) if u == skip]
        if picked:
            subset = {name: [tensors[i] for i in picked] for name, tensors in state.items()}
            weight_decay = 0.0 if skip else cfg.weight_decay
            _update([params[i] for i in picked], [grads[i] for i in picked], subset, cfg, lr, weight_decay)


def _update(
    params: list[Tensor],
    grads: list[Tensor],
    state: dict[str, list[Tensor]],
    cfg: OptimizerConfig,
    lr: Tensor | float,
    weight_decay: float,
) -> None:
    """One param group's update by torch.optim's functional kernel (functional_update's)."""
    if cfg.name == "sgd":
        momentum = {"momentum": cfg.momentum, "dampening": 0.0, "nesterov": False}  # SGD's defaults
        buffers = state.get("momentum_buffer", [None] * len(params))
        sgd(
            params,
            grads,
            buffers,
            weight_decay=weight_decay,
            lr=lr,
            maximize=False,
            foreach=False,
            **momentum,
        )
        return
    adam(
        params,
        grads,
        state["exp_avg"],
        state["exp_avg_sq"],
        [],
        state["step"],
        decoupled_weight_decay=cfg.name == "adamw",
        amsgrad=False,
        foreach=False,
        maximize=False,
        beta1=cfg.betas[0],
        beta2=cfg.betas[1],
        lr=lr,
        weight_decay=weight_decay,
        eps=cfg.eps,
        capturable=not state["step"][0].is_cpu,  # the counts on a GPU: as build_optimizer made them
    )
