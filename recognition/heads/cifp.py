"""CIFP, Consistent Instance False Positive (Xu et al., CVPR 2021), for demographic fairness.

Read from TFace's ``torchkit/head/localfc/cifp.py`` (the code, not the paper, fixes the
details). A CosFace head whose target logit carries an extra penalty proportional to the
instance's own false positives at a global threshold:

1. c_ij: cosines (N x K); c_y the target; c~ the same with the class centres detached.
2. Non-targets already above their target (c_ij > c_y) are excluded from what follows.
3. T_u = the k-th largest remaining non-target cosine in the (all-gathered) batch, with
   k = ceil(FAR * (#non-targets - #excluded)); FAR defaults to 1 / (C - 1), i.e. on average
   one false positive per instance.
4. H_i = the remaining non-targets of row i with c_ij > T_u (instance false positives).
5. p_i = mean over H_i of c_ij^2, where c_ij >= c_y - m uses the detached centres so the
   penalty does not push those centres; p_i = 0 when H_i is empty.
6. target logit = s * (c_y - m - (1 + c~_y) * p_i); non-targets s * c_ij.

Under Partial FC the counts in step 3 are over the sampled columns.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from synthface.pipeline.errors import ConfigError
from synthface.recognition.heads._base import MarginHead, replace_target, target_column


def _world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class CIFPHead(MarginHead):
    """Args:
    margin: CosFace margin m (0.35).
    far: target false-accept rate defining T_u (default 1 / (num_classes - 1)).
    scale, sample_rate: as for every head.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: float = 0.35,
        far: float | None = None,
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
        if margin < 0:
            raise ConfigError(f"margin must be >= 0, got {margin!r}")
        far = 1.0 / (num_classes - 1) if far is None else float(far)
        if not 0.0 < far <= 1.0:
            raise ConfigError(f"far must be in (0, 1], got {far!r}")
        self.m = float(margin)
        self.far = far

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.m}, far={self.far:.3g}"

    @torch.no_grad()
    def threshold(self, neg: torch.Tensor, above: torch.Tensor) -> torch.Tensor:
        """T_u: the k-th largest eligible non-target cosine over all ranks (step 3)."""
        n, k_cols = neg.shape
        world = _world()
        excluded = above.sum().to(torch.float64)
        if world > 1:
            dist.all_reduce(excluded)
        eligible = n * (k_cols - 1) * world - float(excluded)
        k = math.ceil(self.far * eligible)
        candidates = neg.masked_fill(above, -2.0).flatten()
        k = max(1, min(k, candidates.numel()))
        top = torch.topk(candidates, k).values
        if world > 1:
            gathered = [torch.empty_like(top) for _ in range(world)]
            dist.all_gather(gathered, top)
            top = torch.topk(torch.cat(gathered), k).values
        return top[-1]

    def margin(self, cos: torch.Tensor, targets: torch.Tensor, ctx: dict) -> torch.Tensor:
        c_y = target_column(cos, targets)
        cos_d = F.linear(ctx["x"], ctx["w"].detach()).clamp(-1.0, 1.0)
        c_y_d = target_column(cos_d, targets)
        is_target = F.one_hot(targets, cos.shape[1]).bool()
        neg = cos.masked_fill(is_target, -2.0)
        neg_d = cos_d.masked_fill(is_target, -2.0)
        above = neg > c_y.detach()
        t_u = self.threshold(neg.detach(), above)
        in_h = (~above) & (neg.detach() > t_u)
        value = torch.where(c_y.detach() - self.m > neg.detach(), neg, neg_d)
        hits = in_h.sum(dim=1, keepdim=True).clamp(min=1)
        penalty = (value.square() * in_h).sum(dim=1, keepdim=True) / hits
        target = c_y - self.m - (1.0 + c_y_d) * penalty
        return replace_target(cos, targets, target)
