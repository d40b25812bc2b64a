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


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """One group decaying everything, or two: >= 2-d tensors decay, 0-/1-d tensors don't."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if decay_all or p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


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
        group["lr"] = lr
