"""Decision thresholds for FRCSyn submissions, chosen only from training-side data.

The organisers' rule (CodaLab forum, 11 Oct 2023): "Only the datasets indicated for
training in the specific sub-task can be used to compute the threshold of your face
recognition system." So the threshold comes from held-out comparisons built from the
*training* identities (a calibration tree), never from the evaluation comparisons, and
the record says exactly which data, method and counts produced it.

Decision rule everywhere: ``decision = 1`` (same person) iff ``score >= threshold``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.recognition.evaluation import roc

__all__ = ["METHODS", "ThresholdRecord", "choose_threshold", "decide"]

METHODS = ("min_fnmr_fmr", "target_fmr")


@dataclass
class ThresholdRecord:
    value: float
    method: str
    target_fmr: float | None
    source: str  # the calibration data it came from
    source_sha256: dict[str, str]
    num_genuine: int
    num_impostor: int
    fmr: float  # on the calibration data
    fnmr: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ThresholdRecord:
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError(f"threshold record has unexpected fields: {exc}") from None


def decide(scores: np.ndarray, threshold: float) -> np.ndarray:
    return (np.asarray(scores, dtype=np.float64) >= threshold).astype(np.int8)


def choose_threshold(
    labels,
    scores,
    *,
    method: str = "min_fnmr_fmr",
    target_fmr: float = 0.01,
    source: str = "",
    source_sha256: dict[str, str] | None = None,
) -> ThresholdRecord:
    """Pick a threshold on calibration scores.

    ``min_fnmr_fmr`` minimises FNMR + FMR (what e.g. UNICA-IGD did); ``target_fmr`` takes
    the lowest FNMR with FMR <= ``target_fmr``. The value is placed halfway between the
    lowest accepted score and the next lower score, so a tiny score shift on new data
    does not flip the decision of a calibration pair sitting exactly on it.
    """
    if method not in METHODS:
        raise InputError(f"unknown threshold method {method!r}; choose one of {', '.join(METHODS)}")
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    fps, tps, thr = roc.binary_curve(labels, scores)
    n_gen, n_imp = int(labels.sum()), int((~labels).sum())
    if n_gen == 0 or n_imp == 0:
        raise InputError(
            f"{source or 'calibration'}: needs genuine and impostor comparisons "
            f"(got {n_gen} genuine, {n_imp} impostor)"
        )
    fps, tps, thr = np.r_[0, fps], np.r_[0, tps], np.r_[np.inf, thr]  # first: accept none
    if method == "min_fnmr_fmr":
        # FNMR + FMR = fn/G + fp/I, compared exactly as fn*I + fp*G in integers
        cost = (n_gen - tps) * n_imp + fps * n_gen
        i = int(np.argmin(cost))  # first = strictest among equals
    else:
        # fp/I <= target  <=>  fp <= target*I (exact for the counts we have)
        i = int(np.flatnonzero(fps <= target_fmr * n_imp)[-1])
    accepted = thr[i]  # accept scores >= this (inf = accept none)
    if i + 1 < thr.size:
        below = thr[i + 1]
        value = (accepted + below) / 2 if np.isfinite(accepted) else np.nextafter(below, np.inf)
        if not below < value <= accepted:  # adjacent floats
            value = accepted
    else:
        value = accepted
    pred = scores >= value
    return ThresholdRecord(
        value=float(value),
        method=method,
        target_fmr=float(target_fmr) if method == "target_fmr" else None,
        source=source,
        source_sha256=dict(source_sha256 or {}),
        num_genuine=int(labels.sum()),
        num_impostor=int((~labels).sum()),
        fmr=float(np.mean(pred[~labels])),
        fnmr=float(np.mean(~pred[labels])),
    )
