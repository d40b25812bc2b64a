"""Training objectives: the one extension point of the recognizer training loop.

A training option — DDL, EKD distillation, adversarial training, a privacy front end —
is an :class:`Objective` registered under the name of its config section (``ddl:``,
``distill:``, ``ekd:``, ``adversarial:``). It is an ``nn.Module`` inside
:class:`synthface.recognition.training.loop.TrainModule`, so the optimizer trains its
parameters, checkpoints carry its buffers (exact resume) and DDP wraps it with the
model. It may take part in a run at four fixed points, and nowhere else:

1. **build** — :meth:`Objective.wrap_backbone` may return another backbone (AFA turns
   every BatchNorm into a clean/adversarial pair; a front end would prepend a module);
2. **prepare** — :meth:`Objective.prepare` runs once before the first step on every
   process (EKD embeds the training set with its frozen teacher, once);
3. **data** — :meth:`Objective.sample_fields` names per-sample values the loader adds
   to each batch (:mod:`synthface.recognition.training.fields`);
4. **step** — :meth:`Objective.transform` may change the backbone's input (adversarial
   examples), then :meth:`Objective.loss_terms` adds weighted terms to the head's loss
   and :meth:`Objective.step_metrics` reports diagnostics that are logged, not optimised.

The loop never names an option: :func:`build_objectives` creates one objective per
registered section that the config sets, in ``order`` (then name) order.

To add one: a config section on :class:`synthface.recognition.config.TrainConfig`, a
subclass here or in its own module decorated with ``@register_objective("section")``
and a ``from_config(cfg, num_classes)``; a built-in module is also named in
:data:`OBJECTIVES`'s ``builtins`` so the registry imports it when it is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from synthface.pipeline.registry import Registry
from synthface.recognition.training.fields import SampleField

if TYPE_CHECKING:
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.heads import HeadOutput
    from synthface.recognition.training.loop import Run, TrainModule

__all__ = [
    "OBJECTIVES",
    "Objective",
    "Step",
    "StepOutput",
    "build_objectives",
    "register_objective",
]


@dataclass
class Step:
    """What one micro-batch's forward pass knows, handed from stage to stage.

    Attributes:
        x: the backbone's input, N x C x H x W in [-1, 1] (after augmentation).
        labels: N int64 class labels.
        fields: per-sample tensors named by the objectives' ``sample_fields`` (N x ...).
        model: the (unwrapped) :class:`TrainModule`, for objectives that run it (PGD).
        backbone_kwargs: extra keyword arguments of the backbone call (AFA's fusing weights).
        embeddings: the backbone's N x D output, set after ``transform``.
        head: the margin head's output, set after ``transform``.
    """

    x: torch.Tensor
    labels: torch.Tensor
    fields: dict[str, torch.Tensor]
    model: TrainModule
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    embeddings: torch.Tensor | None = None
    head: HeadOutput | None = None


@dataclass
class StepOutput:
    """The training module's result: total loss, head logits/targets, named terms and metrics."""

    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    terms: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class of a training option; every hook defaults to doing nothing.

    Attributes:
        terms: names of the terms :meth:`loss_terms` returns; each is logged as
            ``loss_<name>`` in ``metrics.csv`` (the head's own loss is ``loss_head``).
        metrics: names of the values :meth:`step_metrics` returns, logged as they are.
        order: objectives run in ascending ``order`` (then by name).
        changes_model: the section changes the trained architecture, so a checkpoint
            cannot be resumed with it changed.
    """

    terms: ClassVar[tuple[str, ...]] = ()
    metrics: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 0
    changes_model: ClassVar[bool] = False

    @classmethod
    def from_config(cls, cfg: TrainConfig, num_classes: int) -> Objective:
        raise NotImplementedError

    def wrap_backbone(self, backbone: nn.Module) -> nn.Module:
        """Build time: the backbone to train (by default the one given)."""
        return backbone

    def prepare(self, run: Run) -> None:
        """Once before the first step, on every process (collectives allowed)."""

    def sample_fields(self) -> Mapping[str, SampleField]:
        """Per-sample values the loader must attach to each batch."""
        return {}

    def transform(self, step: Step) -> Step:
        """Change the backbone's input (and labels/fields with it) before the forward pass."""
        return step

    def loss_terms(self, step: Step) -> dict[str, torch.Tensor]:
        """Weighted scalar terms added to the head's loss (names as in ``terms``)."""
        return {}

    def step_metrics(self, step: Step) -> dict[str, torch.Tensor]:
        """Scalar diagnostics of the step (names as in ``metrics``; run without gradients)."""
        return {}


# The registry imports a built-in's module on first use: no caller has to, and this
# module does not import the objective modules (they import it).
OBJECTIVES: Registry[type[Objective]] = Registry(
    "training objective",
    builtins={
        "adversarial": "synthface.recognition.training.adversarial",
        "ddl": "synthface.recognition.training.ddl",
        "distill": "synthface.recognition.training.distill",
        "ekd": "synthface.recognition.training.ekd",
    },
)


def register_objective(section: str):
    """Class decorator: the objective switched on by config section ``section``."""
    return OBJECTIVES.register(section)


def objective_sections() -> list[str]:
    return OBJECTIVES.names()


def build_objectives(cfg: TrainConfig, num_classes: int) -> list[Objective]:
    """One objective per registered section that ``cfg`` sets, in run order."""
    found = [
        OBJECTIVES.get(name)
        for name in objective_sections()
        if getattr(cfg, name, None) is not None
    ]
    found.sort(key=lambda cls: (cls.order, cls.__name__))
    return [cls.from_config(cfg, num_classes) for cls in found]


def model_sections() -> list[str]:
    """Config sections that define the architecture: model, head and model-changing options."""
    return ["model", "head"] + [
        name for name in objective_sections() if OBJECTIVES.get(name).changes_model
    ]
