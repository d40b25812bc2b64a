"""Error-versus-reject curves: how much a quality score helps a recognizer by rejecting.

ERC (Grother & Tabassi 2007), as face-image-quality papers report it: fix the decision
threshold at a false match rate on *all* comparisons, then drop the comparisons whose
quality — the lower of the two images' qualities — is among the lowest fraction ``f``
of the genuine comparisons, and report the false non-match rate of what is left. A
useful quality score makes FNMR fall fast as ``f`` grows; a random score leaves it
flat. The area under the curve (over the fractions given) summarises it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.recognition.evaluation.roc import fnmr_at_fmr

DEFAULT_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(11))  # 0 .. 0.5


@dataclass
class ERCResult:
    """One error-versus-reject curve."""

    fmr: float
    threshold: float
    fractions: list[float]
    fnmr: list[float]
    area: float  # trapezoid area under FNMR over the fractions
    genuine: int
    impostor: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "fmr": self.fmr,
            "threshold": round(self.threshold, 6),
            "fractions": self.fractions,
            "fnmr": [round(v, 6) for v in self.fnmr],
            "area": round(self.area, 6),
            "genuine": self.genuine,
            "impostor": self.impostor,
            **self.extra,
        }


def error_versus_reject(
    scores: np.ndarray,
    issame: np.ndarray,
    pair_quality: np.ndarray,
    *,
    fmr: float = 1e-3,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> ERCResult:
    """FNMR at a fixed FMR threshold as the lowest-quality genuine comparisons are dropped.

    Args:
        scores: similarity per comparison (higher = more alike).
        issame: True for genuine comparisons.
        pair_quality: quality per comparison (usually ``min(q_a, q_b)``); ties are
            broken by comparison order, so break them randomly beforehand if needed.
        fmr: false match rate that fixes the threshold on all comparisons.
        fractions: shares of genuine comparisons rejected, each in [0, 1).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    same = np.asarray(issame, dtype=bool).ravel()
    q = np.asarray(pair_quality, dtype=np.float64).ravel()
    if not (scores.shape == same.shape == q.shape):
        raise InputError(f"ERC: {scores.size} scores, {same.size} labels, {q.size} qualities")
    if not np.isfinite(q).all():
        raise InputError("ERC: quality scores must be finite")
    if any(not 0 <= f < 1 for f in fractions):
        raise InputError(f"ERC: fractions must lie in [0, 1), got {list(fractions)}")
    _, threshold = fnmr_at_fmr(same, scores, fmr)
    genuine = scores[same]
    order = np.argsort(q[same], kind="stable")  # lowest quality first
    miss = (genuine < threshold)[order]
    remaining_misses = np.cumsum(miss[::-1])[::-1]  # misses among ranks >= r
    g = genuine.size
    fnmr = []
    for f in fractions:
        r = int(np.floor(f * g))
        fnmr.append(float(remaining_misses[r] / (g - r)) if r < g else 0.0)
    fr = [float(f) for f in fractions]
    area = float(np.trapezoid(fnmr, fr)) if len(fr) > 1 else 0.0
    return ERCResult(fmr, float(threshold), fr, fnmr, area, int(g), int((~same).sum()))
