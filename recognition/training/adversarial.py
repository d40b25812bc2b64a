"""Adversarial training with examples of random strength: AFA, or plain PGD training.

Every training batch gets an adversarial copy: each sample's budget is drawn from
``U(0, epsilon_max)`` (``random_strength``), and PGD on the live backbone pushes the
sample's embedding away from its clean embedding (``synthface.recognition.attacks``).
The backbone then sees clean rows followed by adversarial rows, the margin head's loss
covers both with the same labels, and every per-sample field is duplicated with them.

``method: afa`` wraps the backbone (``synthface.recognition.backbones.afa``): the
adversarial rows are normalised with the fusing weight ``w = epsilon / epsilon_max``
(clean rows 0), and every layer fits its estimator of ``w`` to those targets (running
moments; the mean squared error of the estimates is logged as ``fuse_error``) in an
extra no-grad pass that mixes by the estimates, as at test time
(:meth:`AFABackbone.fit_estimators` says why). At test time the estimates alone set
``w``: one model for every strength. ``method: pgd`` is the plain baseline on the
same examples (one set of BatchNorms).

Examples are crafted with the backbone in evaluation mode (running statistics, nothing
updated) and, for AFA, at their target fusing weight. The budgets come from the global
torch generator, which checkpoints restore, so resumed runs draw the same attacks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synthface.recognition.attacks import pgd_attack
from synthface.recognition.backbones.afa import AFABackbone, afa_backbone
from synthface.recognition.config import AdversarialConfig, TrainConfig
from synthface.recognition.training.objectives import Objective, Step, register_objective

FUSE_TARGET = "afa_fuse_target"


@register_objective("adversarial")
class AdversarialObjective(Objective):
    """``adversarial:`` — doubles every batch with PGD examples of random strength."""

    order = 100  # after any other input transform: attack what the backbone will see
    changes_model = True

    def __init__(self, cfg: AdversarialConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.afa = cfg.method == "afa"
        self.metrics = ("adv_head", "fuse_error") if self.afa else ("adv_head",)
        self._estimates: torch.Tensor | None = None  # the last fit pass's (metrics)

    @classmethod
    def from_config(cls, cfg: TrainConfig, num_classes: int) -> AdversarialObjective:
        return cls(cfg.adversarial)

    def wrap_backbone(self, backbone: nn.Module) -> nn.Module:
        return afa_backbone(backbone, self.cfg.fuse_momentum) if self.afa else backbone

    def strengths(self, n: int, device: torch.device) -> torch.Tensor:
        """Per-sample budgets in pixel units."""
        if not self.cfg.random_strength:
            return torch.full((n,), self.cfg.epsilon_max, device=device)
        return torch.rand(n, device=device) * self.cfg.epsilon_max

    def transform(self, step: Step) -> Step:
        backbone = step.model.backbone
        x, n = step.x, step.x.shape[0]
        eps = self.strengths(n, x.device)
        fuse = (eps / self.cfg.epsilon_max).to(x.dtype)
        was_training = backbone.training
        backbone.eval()
        try:
            if isinstance(backbone, AFABackbone):
                embed = lambda z: backbone(z, fuse=fuse)  # noqa: E731
                with torch.no_grad():
                    clean = backbone(x, fuse=torch.zeros_like(fuse))
            else:
                embed = backbone
                with torch.no_grad():
                    clean = backbone(x)
            x_adv = pgd_attack(
                embed, x, clean, eps, steps=self.cfg.steps, step_size=self.cfg.step_size
            )
        finally:
            backbone.train(was_training)
        step.x = torch.cat([x, x_adv])
        step.labels = torch.cat([step.labels, step.labels])
        step.fields = {k: torch.cat([v, v]) for k, v in step.fields.items()}
        if self.afa:
            target = torch.cat([torch.zeros_like(fuse), fuse])
            self._estimates = backbone.fit_estimators(step.x, target)
            step.fields[FUSE_TARGET] = target
            step.backbone_kwargs = {**step.backbone_kwargs, "fuse": target, "clean_rows": n}
        return step

    def step_metrics(self, step: Step) -> dict[str, torch.Tensor]:
        """``adv_head``: the head's cross-entropy on the adversarial rows alone;
        ``fuse_error``: mean squared error of the layers' fusing-weight estimates."""
        n = step.x.shape[0] // 2
        logits, targets = step.head.logits[n:].float(), step.head.targets[n:]
        out = {"adv_head": F.cross_entropy(logits, targets)}
        if self.afa:
            estimates = self._estimates  # layers x 2N, test-time path, before this fit
            target = step.fields[FUSE_TARGET].to(estimates.dtype).expand_as(estimates)
            out["fuse_error"] = F.mse_loss(estimates, target)
        return out
