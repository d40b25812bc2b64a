"""ArcFace, CosFace and the combined margin cos(m1*theta + m2) - m3 (InsightFace).

Notation: c = cos(theta_y), the target cosine; s the scale. Only the target logit
changes; non-target logits stay s*cos(theta_j).

**ArcFace has two formulations** (``ArcFaceHead(formulation=...)``):

* ``"arcface_torch"`` (default) — what arcface_torch's ``CombinedMarginLoss`` does today:
  the target logit is cos(theta + m) for *every* theta, with no threshold, and the
  gradient passes through as if the logit were c (arcface_torch computes the margin on
  the logits in place under ``torch.no_grad``, so autograd only sees s*c). Written here
  as c + (cos(theta + m) - c).detach(): the same forward values and the same gradient.
* ``"threshold"`` — the original ArcFace code (insightface's MXNet recipe, arcface_torch
  before its combined-margin rewrite): cos(theta + m) while theta + m <= pi, the linear
  fallback c - m sin(pi - m) beyond it, differentiated normally; ``easy_margin`` applies
  the margin only where c > 0 instead.

Numerical safety of the general combined margin (and of ``threshold``). The angular
margin is monotone only while m1*theta + m2 <= pi, i.e. c > th = cos(theta_max),
theta_max = (pi - m2) / m1. Beyond it the linear fallback c - mm is used, with
mm = sin(theta_max) * ((m1 - 1) * theta_max + m2): the angular margin at theta_max times
the slope there, which is m sin(pi - m) for m1 = 1. The square root and acos work on
clamped values whose clamp passes zero gradient at the poles, so neither branch of
``torch.where`` can produce an inf gradient that would turn into NaN (0 * inf).
"""

from __future__ import annotations

import math

import torch

from synthface.pipeline.errors import ConfigError
from synthface.recognition.heads._base import MarginHead, replace_target, target_column

_EPS = 1e-7


def angular_target(c: torch.Tensor, m1: float, m2: float) -> torch.Tensor:
    """cos(m1 * theta + m2) for c = cos(theta), safe at c = +-1."""
    if m1 == 1.0:
        sin = torch.sqrt(torch.clamp(1.0 - c * c, min=1e-12))
        return c * math.cos(m2) - sin * math.sin(m2)
    theta = torch.acos(c.clamp(-1.0 + _EPS, 1.0 - _EPS))
    return torch.cos(m1 * theta + m2)


class CombinedMarginHead(MarginHead):
    """Target logit s * (cos(m1*theta + m2) - m3).

    Args:
        m1: multiplicative angular margin (SphereFace), 1 = none.
        m2: additive angular margin (ArcFace), 0 = none.
        m3: additive cosine margin (CosFace), 0 = none.
        easy_margin: apply the angular margin only for c > 0 (instead of the threshold).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        m1: float = 1.0,
        m2: float = 0.3,
        m3: float = 0.2,
        easy_margin: bool = False,
        scale: float = 64.0,
        sample_rate: float = 1.0,
        num_shards: int = 1,
        shard_index: int = 0,
    ) -> None:
        super().__init__(
            embedding_dim,
            num_classes,
            scale,
            sample_rate,
            num_shards=num_shards,
            shard_index=shard_index,
        )
        if m1 <= 0 or not 0.0 <= m2 < math.pi or m3 < 0:
            raise ConfigError(f"margins need m1 > 0, 0 <= m2 < pi, m3 >= 0; got ({m1}, {m2}, {m3})")
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.easy_margin = bool(easy_margin)
        theta_max = (math.pi - self.m2) / self.m1
        if theta_max >= math.pi:  # margin never leaves the monotone range
            self.th, self.mm = -2.0, 0.0
        else:
            self.th = math.cos(theta_max)
            self.mm = math.sin(theta_max) * ((self.m1 - 1.0) * theta_max + self.m2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m=({self.m1}, {self.m2}, {self.m3}), easy_margin={self.easy_margin}"

    supports_sharding = True  # only the target logit changes

    def margin(self, cos: torch.Tensor, targets: torch.Tensor, ctx: dict) -> torch.Tensor:
        """Target logit changed; rows with target -1 (owned by another shard) untouched."""
        if self.sharded:
            own = (targets >= 0).view(-1, 1)
            safe = targets.clamp(min=0)
            c = target_column(cos, safe)
            return replace_target(cos, safe, torch.where(own, self.target_logit(c), c))
        return replace_target(cos, targets, self.target_logit(target_column(cos, targets)))

    def target_logit(self, c: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1.0 and self.m2 == 0.0:
            return c - self.m3
        phi = angular_target(c, self.m1, self.m2)
        if self.easy_margin:
            phi = torch.where(c > 0, phi, c)
        else:
            phi = torch.where(c > self.th, phi, c - self.mm)
        return phi - self.m3


class ArcFaceHead(CombinedMarginHead):
    """ArcFace (Deng et al. 2019): cos(theta + m), default s = 64, m = 0.5.

    ``formulation``: ``"arcface_torch"`` (no threshold, straight-through gradient, as
    arcface_torch trains) or ``"threshold"`` (the original code's fallback beyond
    theta + m > pi, optionally ``easy_margin``); see the module docstring.
    """

    FORMULATIONS = ("arcface_torch", "threshold")

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.5,
        formulation: str = "arcface_torch",
        easy_margin: bool = False,
        scale: float = 64.0,
        sample_rate: float = 1.0,
        num_shards: int = 1,
        shard_index: int = 0,
    ) -> None:
        super().__init__(
            embedding_dim,
            num_classes,
            m1=1.0,
            m2=margin,
            m3=0.0,
            easy_margin=easy_margin,
            scale=scale,
            sample_rate=sample_rate,
            num_shards=num_shards,
            shard_index=shard_index,
        )
        if formulation not in self.FORMULATIONS:
            raise ConfigError(
                f"ArcFace formulation must be one of {', '.join(self.FORMULATIONS)}, "
                f"got {formulation!r}"
            )
        if easy_margin and formulation != "threshold":
            raise ConfigError("easy_margin belongs to formulation 'threshold'")
        self.formulation = formulation

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, formulation={self.formulation}"

    def target_logit(self, c: torch.Tensor) -> torch.Tensor:
        if self.formulation == "threshold":
            return super().target_logit(c)
        theta = torch.acos(c.detach().clamp(-1.0, 1.0))
        return c + (torch.cos(theta + self.m2) - c.detach())


class CosFaceHead(CombinedMarginHead):
    """CosFace (Wang et al. 2018): cos(theta) - m, default s = 64, m = 0.35 (arcface_torch
    WebFace/Glint configs use 0.4)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.35,
        scale: float = 64.0,
        sample_rate: float = 1.0,
        num_shards: int = 1,
        shard_index: int = 0,
    ) -> None:
        super().__init__(
            embedding_dim,
            num_classes,
            m1=1.0,
            m2=0.0,
            m3=margin,
            scale=scale,
            sample_rate=sample_rate,
            num_shards=num_shards,
            shard_index=shard_index,
        )
