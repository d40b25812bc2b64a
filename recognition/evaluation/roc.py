"""Score-based verification curves: ROC, TAR@FAR as insightface reads it, AUC, EER, FNMR@FMR.

Every function takes ``labels`` (1/True = genuine pair) and ``scores`` where a higher
score means "more likely the same identity" (cosine similarity, or a negated
distance). One sort serves a whole curve, so millions of pairs cost well under a
second; nothing loops over thresholds in Python.

The ROC follows ``sklearn.metrics.roc_curve`` with its default
``drop_intermediate=True``, because insightface's IJB script reads TAR@FAR off that
thinned curve and the nearest-FPR reading depends on which points survive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from synthface.pipeline.errors import InputError

__all__ = [
    "IJB_FARS",
    "RocCurve",
    "auc",
    "binary_curve",
    "eer",
    "fnmr_at_fmr",
    "roc_curve",
    "tar_at_far",
]

# The targets insightface's eval_ijbc prints; papers quote 1e-4 and 1e-5.
IJB_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class RocCurve:
    """ROC points ordered by decreasing threshold; ``fpr[0] == tpr[0] == 0``."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray  # accept when score >= threshold; thresholds[0] = +inf


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool, copy=False).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise InputError(f"labels ({labels.size}) and scores ({scores.size}) differ in length")
    if scores.size and not np.isfinite(scores).all():
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise InputError(f"score at position {bad} is {scores[bad]} (scores must be finite)")
    return labels, scores


def binary_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (false accepts, true accepts, threshold) at each distinct score, high to low."""
    labels, scores = _check(labels, scores)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    y = labels[order]
    # Last position of every run of equal scores: a threshold cannot split ties.
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.empty(0, np.int64)
    tps = np.cumsum(y, dtype=np.int64)[ends]
    fps = ends + 1 - tps
    return fps, tps, s[ends]


def roc_curve(labels, scores, *, drop_intermediate: bool = True) -> RocCurve:
    """ROC like ``sklearn.metrics.roc_curve`` (collinear points dropped by default)."""
    fps, tps, thr = binary_curve(labels, scores)
    if fps.size == 0:
        raise InputError("cannot build a ROC from zero pairs")
    if tps[-1] == 0 or fps[-1] == 0:
        raise InputError(
            f"ROC needs genuine and impostor pairs (got {int(tps[-1])} genuine, "
            f"{int(fps[-1])} impostor)"
        )
    if drop_intermediate and fps.size > 2:
        keep = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps = np.r_[0, fps]
    tps = np.r_[0, tps]
    thr = np.r_[np.inf, thr]
    return RocCurve(fpr=fps / fps[-1], tpr=tps / tps[-1], thresholds=thr)


def tar_at_far(labels, scores, fars: Sequence[float] = IJB_FARS) -> dict[float, float]:
    """TAR at each target FAR, read at the ROC point whose FPR is *nearest* the target.

    This is insightface's IJB reading: it is not "the best TAR with FAR <= target";
    among equally near points the one with the largest TPR wins.
    """
    curve = roc_curve(labels, scores)
    fpr = curve.fpr[::-1]
    tpr = curve.tpr[::-1]
    out = {}
    for target in fars:
        idx = int(np.argmin(np.abs(fpr - target)))  # first = largest TPR among ties
        out[float(target)] = float(tpr[idx])
    return out


def auc(labels, scores) -> float:
    """Area under the ROC (trapezoids; ties handled as in sklearn)."""
    curve = roc_curve(labels, scores, drop_intermediate=False)
    return float(np.trapezoid(curve.tpr, curve.fpr))


def eer(labels, scores) -> float:
    """Equal error rate: where FNMR = 1 - TPR crosses FMR = FPR, linearly interpolated."""
    curve = roc_curve(labels, scores, drop_intermediate=False)
    diff = (1.0 - curve.tpr) - curve.fpr  # decreasing from 1 to -1 along the curve
    i = int(np.searchsorted(-diff, 0.0, side="left"))  # first point with diff <= 0
    if i == 0:
        return float(curve.fpr[0])
    d0, d1 = diff[i - 1], diff[i]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(curve.fpr[i - 1] + w * (curve.fpr[i] - curve.fpr[i - 1]))


def fnmr_at_fmr(labels, scores, fmr: float = 0.01) -> tuple[float, float]:
    """Lowest FNMR among thresholds whose FMR does not exceed ``fmr``; returns (fnmr, threshold).

    A threshold that accepts a score ``s`` accepts every score >= s, so only distinct
    scores are candidates; ties are never split.
    """
    curve = roc_curve(labels, scores, drop_intermediate=False)
    ok = np.flatnonzero(curve.fpr <= fmr)
    best = ok[-1]  # fpr and tpr are non-decreasing along the curve
    return float(1.0 - curve.tpr[best]), float(curve.thresholds[best])
