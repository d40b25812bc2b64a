"""Distribution Distillation Loss (DDL; Huang et al., ECCV 2020) as a training objective.

Hard samples (large pose, low resolution) have a worse similarity distribution than
easy ones under the same network. DDL treats the easy samples' distributions as a
teacher and pulls the hard samples' distributions towards them, inside one network and
one batch: no second model.

Notation (paper -> code). Per batch, cosine similarities of L2-normalised embeddings:

* ``s+`` (``pos``): same-identity pairs, kept above ``positive_threshold`` (0);
* ``s-`` (``neg``): per anchor sample, its hardest negative — the highest cosine to a
  sample of another identity;
* branch 0 = easy (teacher), branch 1 = hard (student). Easy positives pair two easy
  samples, hard positives have at least one hard sample (the cross-condition pairs that
  hard verification protocols test, e.g. frontal vs profile); easy anchors look for
  negatives among easy samples, hard anchors among all samples;
* soft histogram ``P(t_k) ∝ Σ_i exp(-(s_i - t_k)^2 / (2 sigma^2))`` at ``t_k = k / bins``
  (``sigma = 0.1``, 1000 points in [0, 1)), normalised to sum 1;
* ``L = 0.1 KL(P+_0 || P+_1) + 0.02 KL(P-_0 || P-_1) + 0.5 Σ_{a,b} (E[s-_a] - E[s+_b])``;
  the teacher histograms are detached (the easy samples are not pulled towards the
  hard ones), the order term acts on both branches. It is added to the head's loss.

Which samples are hard is a :class:`synthface.recognition.config.HardRule` evaluated per
sample in the loader (:class:`HardSampleFlag`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from synthface.pipeline.errors import InputError, ShardError
from synthface.recognition.config import DDLConfig, HardRule, TrainConfig
from synthface.recognition.training.fields import KeyedArray, key_code
from synthface.recognition.training.objectives import Objective, Step, register_objective

FIELD = "ddl_hard"


# ---------------------------------------------------------------- which samples are hard


class HardSampleFlag:
    """Sample field: 1.0 for a hard sample under ``rule``, else 0.0 (picklable)."""

    def __init__(self, rule: HardRule) -> None:
        self.rule = rule
        self.scores: KeyedArray | None = None
        self.listed: frozenset[int] | None = None
        if rule.kind == "quality" and rule.file:
            self.scores = KeyedArray(rule.file, field="ddl.hard.file")
        if rule.kind == "list":
            path = Path(rule.file or "")
            if not path.is_file():
                raise InputError(f"ddl.hard.file: {path}: no such file")
            keys = path.read_text().split()
            codes = [key_code(k) for k in keys]
            if None in codes:
                bad = keys[codes.index(None)]
                raise InputError(f"ddl.hard.file: {path}: {bad!r} is not a shard key")
            self.listed = frozenset(codes)

    def _meta(self, sample: dict[str, Any], *path: str) -> float:
        value: Any = sample.get("meta") or {}
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, int | float):
            raise ShardError(
                f"sample {sample.get('__key__')!r}: ddl.hard.kind {self.rule.kind!r} needs "
                f"meta.{'.'.join(path)} (a number); give ddl.hard a list or a scores file instead"
            )
        return float(value)

    def __call__(self, sample: dict[str, Any]) -> float:
        kind, threshold = self.rule.kind, self.rule.threshold
        if kind == "yaw":
            return float(abs(self._meta(sample, "attributes", "yaw")) >= threshold)
        if kind == "blur":
            return float(self._meta(sample, "attributes", "blur") >= threshold)
        if kind == "quality":
            q = (
                float(self.scores(sample).reshape(-1)[0])
                if self.scores is not None
                else self._meta(sample, "qc", "quality")
            )
            return float(q < threshold)
        return float(key_code(sample["__key__"]) in self.listed)


# ---------------------------------------------------------------- the loss


def soft_histogram(values: torch.Tensor, points: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian-kernel histogram of ``values`` at ``points``, normalised to sum 1."""
    weights = torch.exp(-((values.reshape(-1, 1) - points.reshape(1, -1)) ** 2) / (2 * sigma**2))
    hist = weights.sum(0)
    return hist / hist.sum().clamp_min(1e-12)


def kl_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """KL(p || q) of two histograms over the same points."""
    p, q = p.clamp_min(eps), q.clamp_min(eps)
    return (p * (p.log() - q.log())).sum()


@dataclass
class PairStats:
    """Positive similarities and hardest-negative similarities of one branch."""

    pos: torch.Tensor
    neg: torch.Tensor


def branch_stats(
    sims: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    partners: torch.Tensor,
    candidates: torch.Tensor,
    positive_threshold: float,
) -> PairStats:
    """Statistics of the branch whose positive pairs are ``partners`` (N x N, upper
    triangle) and whose negatives are each ``anchors`` row's best ``candidates`` column."""
    n = sims.shape[0]
    same = labels.view(-1, 1) == labels.view(1, -1)
    upper = torch.ones(n, n, dtype=torch.bool, device=sims.device).triu(1)
    pos = sims[same & upper & partners]
    pos = pos[pos > positive_threshold]
    allowed = ~same & candidates.view(1, -1) & anchors.view(-1, 1)
    masked = sims.masked_fill(~allowed, float("-inf"))
    best = masked.max(dim=1).values
    return PairStats(pos=pos, neg=best[torch.isfinite(best)])


@dataclass
class DDLTerms:
    pos_kl: torch.Tensor
    neg_kl: torch.Tensor
    order: torch.Tensor
    total: torch.Tensor
    easy: PairStats
    hard: PairStats


def ddl_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, hard: torch.Tensor, cfg: DDLConfig
) -> DDLTerms:
    """The DDL terms for one batch (``hard``: N booleans); see the module docstring."""
    x = F.normalize(embeddings.float(), dim=1)
    sims = x @ x.t()
    hard = hard.bool()
    easy = ~hard
    pair_easy = easy.view(-1, 1) & easy.view(1, -1)
    pair_hard = hard.view(-1, 1) | hard.view(1, -1)
    everyone = torch.ones_like(hard)
    e = branch_stats(sims, labels, easy, pair_easy, easy, cfg.positive_threshold)
    h = branch_stats(sims, labels, hard, pair_hard, everyone, cfg.positive_threshold)
    points = torch.arange(cfg.bins, device=x.device, dtype=x.dtype) / cfg.bins
    zero = sims.sum() * 0.0  # keeps the graph (and DDP) intact when a branch is empty

    def kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        if teacher.numel() < 2 or student.numel() < 2:
            return zero
        p = soft_histogram(teacher.detach(), points, cfg.sigma)
        q = soft_histogram(student, points, cfg.sigma)
        return kl_divergence(p, q)

    pos_kl, neg_kl = kl(e.pos, h.pos), kl(e.neg, h.neg)
    negs = [s.neg.mean() for s in (e, h) if s.neg.numel()]
    poss = [s.pos.mean() for s in (e, h) if s.pos.numel()]
    # Σ_{a,b} (E[s-_a] - E[s+_b]) over the branches that have both kinds of pairs
    order = (
        len(poss) * torch.stack(negs).sum() - len(negs) * torch.stack(poss).sum()
        if negs and poss
        else zero
    )
    total = cfg.pos_kl_weight * pos_kl + cfg.neg_kl_weight * neg_kl + cfg.order_weight * order
    return DDLTerms(pos_kl, neg_kl, order, total, e, h)


# ---------------------------------------------------------------- the objective


@register_objective("ddl")
class DDLObjective(Objective):
    """``ddl:`` — the DDL term on every batch, hard samples flagged by ``ddl.hard``."""

    terms = ("ddl",)

    def __init__(self, cfg: DDLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.flag = HardSampleFlag(cfg.hard)

    @classmethod
    def from_config(cls, cfg: TrainConfig, num_classes: int) -> DDLObjective:
        return cls(cfg.ddl)

    def sample_fields(self):
        return {FIELD: self.flag}

    def loss_terms(self, step: Step) -> dict[str, torch.Tensor]:
        terms = ddl_loss(step.embeddings, step.labels, step.fields[FIELD] > 0.5, self.cfg)
        return {"ddl": terms.total}
