"""CurricularFace (Huang et al., CVPR 2020): hard negatives weighted by a learned curriculum.

Notation (paper, Eq. 7-9; the authors' code):
    c = cos(theta_y); the target logit is cos(theta_y + m), replaced by the linear
    fallback c - m*sin(pi - m) where theta_y + m > pi (the threshold of ArcFace's code);
    N(t, c_j) = c_j if cos(theta_y + m) >= c_j else c_j * (t + c_j)   (hard negatives);
    t <- alpha * mean_batch(c) + (1 - alpha) * t, t0 = 0, a buffer without gradient.

A negative is hard when it beats the *margin-adjusted* target cos(theta_y + m) (paper
and released code), not the fallback value: the two differ only for theta_y > pi - m,
where the fallback lies below cos(theta_y + m) and would mark more negatives hard.

Default ``alpha = 0.01``: the authors' released code (HuangYG123/CurricularFace) and
most ports use 0.01; TFace uses 0.1. We keep 0.01 because small CPU/single-GPU batches
make the batch mean noisy, and the slower EMA keeps t from jumping between steps. Set
``alpha=0.1`` to follow TFace. Under DDP the batch mean is averaged over all ranks so
every replica keeps the same t.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from synthface.pipeline.errors import ConfigError
from synthface.recognition.heads._base import MarginHead, replace_target, target_column
from synthface.recognition.heads.margins import angular_target


class CurricularFaceHead(MarginHead):
    """Args:
    margin: additive angular margin m (0.5).
    alpha: EMA momentum of t (0.01, see module docstring).
    scale, sample_rate: as for every head.
    """

    t: torch.Tensor

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.5,
        alpha: float = 0.01,
        scale: float = 64.0,
        sample_rate: float = 1.0,
        num_shards: int = 1,
        shard_index: int = 0,
    ) -> None:
        # num_shards > 1 is refused by MarginHead with a message (supports_sharding)
        super().__init__(
            embedding_dim,
            num_classes,
            scale,
            sample_rate,
            num_shards=num_shards,
            shard_index=shard_index,
        )
        if not 0.0 <= margin < math.pi:
            raise ConfigError(f"margin must be in [0, pi), got {margin!r}")
        if not 0.0 < alpha <= 1.0:
            raise ConfigError(f"alpha must be in (0, 1], got {alpha!r}")
        self.m = float(margin)
        self.alpha = float(alpha)
        self.th = math.cos(math.pi - self.m)
        self.mm = math.sin(math.pi - self.m) * self.m
        self.register_buffer("t", torch.zeros(()))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.m}, alpha={self.alpha}"

    @torch.no_grad()
    def _update_t(self, c: torch.Tensor) -> None:
        total = torch.stack([c.sum(), torch.tensor(float(c.numel()), device=c.device)])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total)
        mean = total[0] / total[1].clamp(min=1.0)
        self.t.mul_(1.0 - self.alpha).add_(self.alpha * mean.to(self.t.dtype))

    def margin(self, cos: torch.Tensor, targets: torch.Tensor, ctx: dict) -> torch.Tensor:
        c = target_column(cos, targets)
        with_margin = angular_target(c, 1.0, self.m)
        target = torch.where(c > self.th, with_margin, c - self.mm)
        if self.training:
            self._update_t(c.detach())
        t = self.t.to(cos.dtype)
        hard = cos > with_margin.detach()
        modulated = torch.where(hard, cos * (t + cos), cos)
        return replace_target(modulated, targets, target)
