"""Optimizer with an explicit weight-decay rule, and the learning-rate schedule.

arcface_torch puts backbone and class centres into one SGD group with weight decay on
every parameter, BatchNorm and PReLU weights and biases included; that is the default
(``optim.decay_norm_and_bias: true``). ``false`` exempts tensors with fewer than two
dimensions, a common variant (timm's ``no_weight_decay``), which this project's CPU
recipe ``world_tiny.yaml`` uses.

The schedule is a pure function of the optimizer step rather than a stateful
``LRScheduler``: a resumed run only needs ``global_step`` to be back on the same curve,
and accelerate's scheduler wrapper (which steps once per process) cannot get it wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from synthface.recognition.config import OptimConfig, ScheduleConfig


def lr_scales(model: nn.Module) -> dict[str, float]:
    """Full parameter-name prefixes -> learning-rate factors, from modules that declare them.

    Extension point: a module may define ``lr_scales() -> {prefix: factor}`` (prefixes
    relative to itself), e.g. a protection whose noise parameters learn at another rate.
    """
    found: dict[str, float] = {}
    for name, module in model.named_modules():
        fn = getattr(module, "lr_scales", None)
        if callable(fn):
            for prefix, factor in fn().items():
                found[f"{name}.{prefix}" if name else prefix] = float(factor)
    return found


def no_weight_decay(model: nn.Module) -> set[str]:
    """Full names of parameters exempt from weight decay, from modules that declare them
    with ``no_weight_decay() -> {relative name}`` (timm's idiom)."""
    found: set[str] = set()
    for name, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            found |= {f"{name}.{rel}" if name else rel for rel in fn()}
    return found


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """Every parameter decays (``decay_all``), or only >= 2-d tensors, except those a module
    exempts (:func:`no_weight_decay`); parameters under a prefix of :func:`lr_scales` form
    their own groups with ``lr_scale``."""
    scales = lr_scales(model)
    exempt = no_weight_decay(model)
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = (decay_all or p.ndim >= 2) and name not in exempt
        scale = next(
            (f for prefix, f in scales.items() if name == prefix or name.startswith(prefix + ".")),
            1.0,
        )
        groups.setdefault((decay, scale), []).append(p)
    out = [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        for (decay, scale), params in sorted(
            groups.items(), key=lambda kv: (not kv[0][0], kv[0][1])
        )
    ]
    return out or [{"params": [], "weight_decay": weight_decay, "lr_scale": 1.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate factor (0..1] of the base rate at an optimizer step (0-based)."""

    cfg: ScheduleConfig
    total_steps: int
    steps_per_epoch: float

    @property
    def warmup_steps(self) -> int:
        return min(self.total_steps, round(self.cfg.warmup_epochs * self.steps_per_epoch))

    def factor(self, step: int) -> float:
        c, warm = self.cfg, self.warmup_steps
        if step < warm:
            return (step + 1) / warm
        if c.kind == "constant":
            return 1.0
        if c.kind == "step":
            passed = sum(step >= round(m * self.steps_per_epoch) for m in c.milestones)
            return c.gamma**passed
        span = max(1, self.total_steps - warm)
        progress = min(1.0, (step - warm) / span)
        if c.kind == "polynomial":
            decay = (1.0 - progress) ** c.power
        else:  # cosine
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return c.min_lr_ratio + (1.0 - c.min_lr_ratio) * decay


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
