"""SlerpFace (AAAI 2025): grouped templates rotated toward noise, with group-wise dropout.

Notation (reference ``modules/model.py``, ``enrollment.py``, ``gen_sim.py``):

- **Template**: the backbone's last feature map ``F`` (C x h x w) -> ``group_cov`` (1x1 conv
  C -> G, BN, PReLU); ``T = group_cov(F(x)) + group_cov(F(flip x))`` is ``L = h * w`` groups of
  ``G`` dimensions (reference: 7 x 7 = 49 groups of 16 at 112 px; 2 x 2 = 4 at 32 px, 3 x 3 = 9
  at 48 px). Group weights ``w = softmax(attention(T))`` over the L positions (sum 1).
- **Training** (not released by the reference; this project's design): the margin head
  trains the embedding ``e = concat_g sqrt(w_g) * t_g / |t_g|``, which has unit norm and
  whose inner product ``sum_g sqrt(w_g w'_g) cos(t_g, t'_g)`` is the weighted group-wise
  cosine that matching computes; ``embedding_dim`` must equal ``L * G``.
- **Enrolment** (:func:`enrol`): key ``k ~ N(0, I)`` (L x G); per group, slerp the unit
  template toward the unit key by ``alpha_g = alpha - w_g``; then dropout: groups with
  ``w_g < median(w)`` zero ``int(G d + gap)`` dimensions drawn with replacement, the others
  ``int(G d - gap)``, ``gap = int(G d / 2)`` (the reference's ``int(8 d)`` at G = 16);
  finally ``p_g = w_g * p_g / |p_g|``. The key is stored next to ``p``.
- **Matching** (:func:`match`): slerp the query toward the stored key with its own
  ``alpha_g``, zero the dimensions zero in ``p``, renormalise per group; score
  ``sum_g <q_g, p_g>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from synthface.pipeline.errors import ConfigError
from synthface.recognition.privacy._base import PROTECTIONS, ProtectedRecognizer, build_server


@dataclass
class Templates:
    """Unprotected grouped templates: ``groups`` N x L x G, ``weights`` N x L (rows sum to 1)."""

    groups: torch.Tensor
    weights: torch.Tensor

    def embedding(self) -> torch.Tensor:
        """``concat_g sqrt(w_g) t_g / |t_g|`` (N x L*G, unit norm)."""
        unit = F.normalize(self.groups, dim=-1)
        return (unit * self.weights.clamp_min(0).sqrt().unsqueeze(-1)).flatten(1)


@dataclass
class Protected:
    """Enrolled templates: ``template`` N x L x G (dropped dimensions are 0), ``key`` N x L x G."""

    template: torch.Tensor
    key: torch.Tensor

    def flat(self) -> torch.Tensor:
        """What the database holds, as one vector per subject: template and key."""
        return torch.cat([self.template.flatten(1), F.normalize(self.key, dim=-1).flatten(1)], 1)


def slerp(t: torch.Tensor, k: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of unit vectors ``t`` toward ``k`` by fraction ``alpha`` (N x L)."""
    cos = (t * k).sum(-1).clamp(-1 + 1e-6, 1 - 1e-6)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    a = alpha.clamp(0.0, 1.0)
    return (torch.sin((1 - a) * theta) / sin).unsqueeze(-1) * t + (
        torch.sin(a * theta) / sin
    ).unsqueeze(-1) * k


def draw_keys(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device)


def drop_mask(
    weights: torch.Tensor, group_size: int, drop_rate: float, generator=None
) -> torch.Tensor:
    """N x L x G float mask, 0 at the dimensions enrolment zeroes (draws with replacement)."""
    n, groups = weights.shape
    gap = int(group_size * drop_rate / 2)
    low = weights < weights.median(dim=1, keepdim=True).values
    many, few = int(group_size * drop_rate + gap), max(0, int(group_size * drop_rate - gap))
    draws = torch.randint(
        group_size, (n, groups, max(many, 1)), generator=generator, device=weights.device
    )
    count = torch.where(low, many, few).unsqueeze(-1)
    used = torch.arange(draws.shape[-1], device=weights.device).view(1, 1, -1) < count
    # a draw past its group's count lands in a spare slot G, dropped below
    hits = torch.zeros(n, groups, group_size + 1, device=weights.device)
    hits.scatter_(2, torch.where(used, draws, group_size), 1.0)
    return 1.0 - hits[..., :group_size]


def enrol(
    templates: Templates,
    key: torch.Tensor,
    *,
    alpha: float = 0.9,
    drop_rate: float = 0.5,
    generator: torch.Generator | None = None,
) -> Protected:
    """Protect templates with ``key`` (N x L x G); see the module docstring."""
    t = F.normalize(templates.groups.float(), dim=-1)
    k = F.normalize(key.float(), dim=-1)
    w = templates.weights.float()
    p = slerp(t, k, alpha - w)
    p = p * drop_mask(w, t.shape[-1], drop_rate, generator)
    p = F.normalize(p, dim=-1) * w.unsqueeze(-1)
    return Protected(p, key)


def match(query: Templates, gallery: Protected, *, alpha: float = 0.9) -> torch.Tensor:
    """Scores (N) of query templates against enrolled templates, pair by pair."""
    t = F.normalize(query.groups.float(), dim=-1)
    k = F.normalize(gallery.key.float(), dim=-1)
    q = slerp(t, k, alpha - query.weights.float())
    q = F.normalize(q * (gallery.template != 0), dim=-1)
    return (q * gallery.template).sum(dim=(1, 2))


def cross_key_scores(a: Protected, b: Protected) -> torch.Tensor:
    """Scores of protected templates ``a`` used as queries against enrolled ``b``, pair by pair.

    On the scale of :func:`match` (``a`` masked like ``b``, renormalised per group, summed
    against ``b``'s weighted groups): what a database comparing two protected templates,
    e.g. enrolled with different keys, would compute.
    """
    q = F.normalize(a.template.float() * (b.template != 0), dim=-1)
    return (q * b.template.float()).sum(dim=(1, 2))


class GroupAttention(nn.Module):
    """Group weights: conv stack on the template map -> 1 x h x w -> softmax over positions."""

    def __init__(self, group_size: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(group_size, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, 1, 3, padding=1),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(t).flatten(1), dim=1)


@PROTECTIONS.register("slerpface")
class SlerpFace(ProtectedRecognizer):
    """A recognizer whose templates are grouped and weighted for slerp protection.

    Args:
        backbone, backbone_params: the feature extractor (its last feature map is used).
        group_size: G, dimensions per group (reference 16).
        alpha: slerp fraction toward the key (script 0.9).
        drop_rate: d, the dropout rate of enrolment (script 0.5).
    """

    template_view = True

    def __init__(
        self,
        *,
        backbone: str = "ir50",
        backbone_params: dict[str, Any] | None = None,
        input_size: int | Sequence[int] = 112,
        embedding_dim: int = 784,
        group_size: int = 16,
        alpha: float = 0.9,
        drop_rate: float = 0.5,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(input_size=input_size, embedding_dim=embedding_dim, eval_seed=eval_seed)
        if not 0.0 < alpha <= 1.0 or not 0.0 <= drop_rate < 1.0:
            raise ValueError(
                f"need 0 < alpha <= 1 and 0 <= drop_rate < 1 (got {alpha}, {drop_rate})"
            )
        self.group_size, self.alpha, self.drop_rate = (
            int(group_size),
            float(alpha),
            float(drop_rate),
        )
        self.body = build_server(
            backbone, dict(backbone_params or {}), channels=3, size=self.size, embedding_dim=8
        )
        channels, h, w = self.body.feature_map
        self.num_groups = h * w
        if embedding_dim != self.num_groups * self.group_size:
            raise ConfigError(
                f"slerpface: model.embedding_dim must be L x G = {h}x{w} groups x "
                f"{self.group_size} = {self.num_groups * self.group_size} at input size "
                f"{self.size} (got {embedding_dim})"
            )
        # the backbone's own embedding layers are not used: the template replaces them
        for name in ("dropout", "fc", "features", "gdc"):
            if hasattr(self.body, name):
                setattr(self.body, name, nn.Identity())
        self.group_cov = nn.Sequential(
            nn.Conv2d(channels, self.group_size, 1, bias=False),
            nn.BatchNorm2d(self.group_size),
            nn.PReLU(self.group_size),
        )
        self.attention = GroupAttention(self.group_size)

    def templates(self, x: torch.Tensor) -> Templates:
        both = self.body.forward_features(torch.cat([x, x.flip(-1)]))
        g = self.group_cov(both)
        t = g[: x.shape[0]] + g[x.shape[0] :]  # G x h x w
        weights = self.attention(t)
        return Templates(t.flatten(2).transpose(1, 2), weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.templates(x).embedding()

    def enrol(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Protected:
        if generator is None:
            generator = self.generator(x.device)
        t = self.templates(x)
        key = draw_keys(t.groups.shape, generator, x.device)
        return enrol(t, key, alpha=self.alpha, drop_rate=self.drop_rate, generator=generator)

    def match(self, x: torch.Tensor, gallery: Protected) -> torch.Tensor:
        return match(self.templates(x), gallery, alpha=self.alpha)

    def server_view(self, x, generator=None):
        return self.enrol(x, generator).flat()
