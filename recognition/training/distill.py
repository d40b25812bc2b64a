"""``distill:`` — pull the student's embeddings towards a frozen teacher's (cosine).

The plain embedding distillation: ``weight * mean(1 - cos(student(x), teacher(x)))`` on
the same (augmented, possibly adversarial) batch, the teacher seeing it resized to its own
input size. The teacher is a project checkpoint or an insightface-style ``.onnx``
(converted to torch operations, ``synthface.recognition.onnx_torch``), so a user can
distil the recognizer they deploy. EKD (``ekd:``) is the evaluation-oriented variant.

The teacher is frozen and stays outside the module tree: not trained, not checkpointed.
It is built when the objective is (before the student is initialised) under a forked RNG,
so a checkpoint teacher's random init does not shift the student's initialisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from synthface.pipeline.errors import ConfigError
from synthface.recognition.training.objectives import Objective, Step, register_objective

if TYPE_CHECKING:
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.training.loop import Run


def load_teacher(cfg: TrainConfig) -> nn.Module:
    """The ``distill.teacher`` recognizer on the CPU, checked against the student's config."""
    from synthface.recognition.onnx_torch import load_recognizer_module

    path = cfg.distill.teacher
    with torch.random.fork_rng(devices=[]):
        model = load_recognizer_module(path, torch.device("cpu"))
    if int(model.embedding_dim) != cfg.model.embedding_dim:
        raise ConfigError(
            f"distill.teacher {path}: {model.embedding_dim}-d embeddings, but "
            f"model.embedding_dim is {cfg.model.embedding_dim}; they must be equal"
        )
    if getattr(model, "input_channels", 3) != 3 or cfg.model.params.get("input_channels", 3) != 3:
        raise ConfigError(
            f"distill.teacher {path}: teacher and student must both take RGB "
            "images (block-DCT students cannot share the teacher's input)"
        )
    return model.requires_grad_(False).eval()


@register_objective("distill")
class DistillObjective(Objective):
    terms = ("distill",)

    def __init__(self, teacher: nn.Module, weight: float) -> None:
        super().__init__()
        self._teacher = [teacher]  # a list: not a submodule (not trained, not saved)
        self.hw = tuple(teacher.input_size)
        self.weight = weight

    @classmethod
    def from_config(cls, cfg: TrainConfig, num_classes: int) -> DistillObjective:
        return cls(load_teacher(cfg), cfg.distill.weight)

    def prepare(self, run: Run) -> None:
        self._teacher[0].to(run.accelerator.device)

    @torch.no_grad()
    def teacher_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        if tuple(x.shape[-2:]) != self.hw:
            x = nn.functional.interpolate(x, size=self.hw, mode="bilinear", antialias=True)
        return self._teacher[0](x).float()

    def loss_terms(self, step: Step) -> dict[str, torch.Tensor]:
        target = self.teacher_embeddings(step.x)
        cos = nn.functional.cosine_similarity(step.embeddings.float(), target, dim=1)
        return {"distill": self.weight * (1 - cos).mean()}
