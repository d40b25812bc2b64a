"""Scores that need only one identity's samples: consistency, diversity, near-duplicates.

Identities are never split across shards, so these run inside the task that generates
a shard, before the shard is written: the per-sample scores go into each sample's
``.json`` member, and the per-identity summary (plus its centroid) is all that the
dataset-level audit needs later. Memory is one identity's embeddings at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.pipeline.qc.config import QCConfig

DIGITS = 6  # scores are rounded so that their JSON text is stable across runs


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _r(value: float) -> float:
    return round(float(value), DIGITS)


@dataclass
class IdentityScores:
    """Per-identity QC summary; ``centroid`` is the unit mean of the unit embeddings."""

    identity: int
    num_samples: int
    consistency: float  # mean cosine of the samples to the centroid
    consistency_min: float
    diversity: float  # 1 - mean pairwise cosine between distinct samples (0 = all equal)
    anchor_cos: float | None  # mean cosine to the conditioning anchor, if scored
    low_consistency: list[int] = field(default_factory=list)  # sample indices
    duplicates: list[int] = field(default_factory=list)  # sample indices (later of a pair)
    quality: float | None = None  # mean face image quality of the samples, if scored
    # [sample index, quality] of every sample: the audit thresholds them (qc.min_quality),
    # so a stricter quality view needs no regeneration
    sample_quality: list[list[float]] = field(default_factory=list)
    centroid: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "identity": self.identity,
            "num_samples": self.num_samples,
            "consistency": self.consistency,
            "consistency_min": self.consistency_min,
            "diversity": self.diversity,
            "anchor_cos": self.anchor_cos,
            "low_consistency": list(self.low_consistency),
            "duplicates": list(self.duplicates),
            "quality": self.quality,
            "sample_quality": [list(p) for p in self.sample_quality],
        }

    @classmethod
    def from_dict(cls, d: dict, centroid: np.ndarray | None = None) -> IdentityScores:
        return cls(**d, centroid=centroid)


def score_identity(
    identity: int,
    embeddings: np.ndarray,
    cfg: QCConfig,
    *,
    sample_indices: list[int] | None = None,
    anchor: np.ndarray | None = None,
    quality: np.ndarray | None = None,
) -> tuple[list[dict], IdentityScores]:
    """Score the ``n`` samples of one identity.

    Args:
        identity: class label of the identity.
        embeddings: ``(n, D)`` embeddings under the evaluation recognizer (normalised here).
        cfg: thresholds.
        sample_indices: the samples' indices within the identity (default ``0..n-1``).
        anchor: ``(D,)`` conditioning anchor, only when it lives in the same embedding
            space as ``embeddings`` (i.e. the evaluation recognizer is the conditioning one).
        quality: ``(n,)`` face image quality scores (``qc.quality_model``), if scored.

    Returns:
        One ``qc`` dict per sample (for its ``.json``) and the identity summary.
    """
    emb = l2_normalize(embeddings)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise InputError(
            f"identity {identity}: need a non-empty (n, D) embedding matrix (got {emb.shape})"
        )
    if not np.all(np.isfinite(emb)):
        raise InputError(f"identity {identity}: embeddings contain NaN or inf")
    n = emb.shape[0]
    idx = list(range(n)) if sample_indices is None else [int(i) for i in sample_indices]
    if len(idx) != n:
        raise InputError(f"identity {identity}: {len(idx)} sample indices for {n} embeddings")
    centroid = l2_normalize(emb.sum(axis=0))
    to_centroid = emb @ centroid
    anchor_cos = None
    if anchor is not None:
        anchor = l2_normalize(np.asarray(anchor, dtype=np.float32).reshape(-1))
        if anchor.shape[0] != emb.shape[1]:
            raise InputError(
                f"identity {identity}: anchor has {anchor.shape[0]} dims, embeddings have {emb.shape[1]}"
            )
        anchor_cos = emb @ anchor
    if quality is not None:
        quality = np.asarray(quality, dtype=np.float64).reshape(-1)
        if quality.shape[0] != n or not np.all(np.isfinite(quality)):
            raise InputError(f"identity {identity}: need {n} finite quality scores")
    # Mean pairwise cosine over i != j from the norm of the sum: |sum|^2 = n + sum_{i!=j} cos.
    total = emb.sum(axis=0)
    pair_mean = (float(total @ total) - n) / (n * (n - 1)) if n > 1 else 1.0
    gram = emb @ emb.T
    duplicate_of: dict[int, int] = {}
    for i in range(1, n):
        close = np.nonzero(gram[i, :i] > cfg.duplicate_similarity)[0]
        originals = [j for j in close if j not in duplicate_of]
        if originals:
            duplicate_of[i] = originals[0]
    per_sample = []
    low = []
    for i in range(n):
        flags = []
        if to_centroid[i] < cfg.min_sample_consistency:
            flags.append("low_consistency")
            low.append(idx[i])
        entry: dict = {"centroid_cos": _r(to_centroid[i]), "flags": flags}
        if anchor_cos is not None:
            entry["anchor_cos"] = _r(anchor_cos[i])
        if quality is not None:
            entry["quality"] = _r(quality[i])
            if cfg.min_quality is not None and quality[i] < cfg.min_quality:
                flags.append("low_quality")
        if i in duplicate_of:
            flags.append("duplicate")
            entry["duplicate_of"] = idx[duplicate_of[i]]
        per_sample.append(entry)
    summary = IdentityScores(
        identity=int(identity),
        num_samples=n,
        consistency=_r(to_centroid.mean()),
        consistency_min=_r(to_centroid.min()),
        diversity=_r(1.0 - pair_mean),
        anchor_cos=None if anchor_cos is None else _r(anchor_cos.mean()),
        low_consistency=low,
        duplicates=[idx[i] for i in sorted(duplicate_of)],
        quality=None if quality is None else _r(quality.mean()),
        sample_quality=[] if quality is None else [[idx[i], _r(quality[i])] for i in range(n)],
        centroid=centroid.astype(np.float32),
    )
    return per_sample, summary
