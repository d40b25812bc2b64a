"""10-fold pair verification exactly as insightface's ``eval/verification.py`` computes it.

Protocol (arcface_torch, the numbers papers quote for LFW, CFP-FP, AgeDB-30, ...):

1. embed each image and its horizontal flip, **sum**, L2-normalise;
2. pair i is images (2i, 2i+1); distance = squared Euclidean ``||e1 - e2||^2``;
3. 10 contiguous folds (sklearn ``KFold(10)``, no shuffle: the first ``n % 10`` folds
   hold one extra pair);
4. per fold, thresholds ``np.arange(0, 4, 0.01)`` (0.00 .. 3.99) are scored on the other
   9 folds, the first best-accuracy threshold is applied to the held-out fold, "same"
   meaning ``dist < threshold``;
5. report mean and (population) std of the 10 held-out accuracies;
6. VAL@FAR=1e-3: on the 9 training folds, FAR is tabulated over
   ``np.arange(0, 4, 0.001)`` and the threshold for the target FAR is read by linear
   interpolation (scipy ``interp1d(kind="slinear")`` semantics; 0.0 when the target FAR
   is never reached), then VAL/FAR are measured on the held-out fold.

The reference loops over thresholds x pairs in Python; here one sort of all distances
plus per-fold cumulative counts gives every fold's count below every threshold, so 1M
pairs take about a second. The cosine variant runs the same folds on cosine similarity
with an *exact* sweep (every distinct score is a candidate), which suits scores that
are not unit-norm distances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.recognition.evaluation import roc

__all__ = [
    "INSIGHTFACE_ACC_THRESHOLDS",
    "INSIGHTFACE_VAL_THRESHOLDS",
    "FoldCounts",
    "VerificationResult",
    "contiguous_folds",
    "evaluate_embeddings",
    "evaluate_scores",
    "exact_thresholds",
    "flip_sum_normalize",
    "interp_slinear",
    "kfold_accuracy",
    "kfold_val_far",
    "l2_normalize",
    "pair_scores",
]

INSIGHTFACE_ACC_THRESHOLDS = np.arange(0, 4, 0.01)
INSIGHTFACE_VAL_THRESHOLDS = np.arange(0, 4, 0.001)
METRICS = ("euclidean_sq", "cosine")


# ---------------------------------------------------------------- embeddings -> scores


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, eps)


def flip_sum_normalize(raw: np.ndarray, raw_flipped: np.ndarray | None = None) -> np.ndarray:
    """insightface "Accuracy-Flip" features: sum raw features of image and flip, then L2-normalise."""
    feats = np.asarray(raw, dtype=np.float64)  # insightface sums and normalises in float64
    if raw_flipped is not None:
        if np.shape(raw_flipped) != feats.shape:
            raise InputError(
                f"flipped features {np.shape(raw_flipped)} do not match features {feats.shape}"
            )
        feats = feats + np.asarray(raw_flipped, dtype=np.float64)
    return l2_normalize(feats)


def pair_scores(
    embeddings: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    metric: str = "euclidean_sq",
    *,
    chunk: int = 1024,
) -> np.ndarray:
    """Score pairs of rows in chunks, so memory stays O(chunk x dim) for millions of pairs.

    ``euclidean_sq`` is a distance (low = same); ``cosine`` a similarity (high = same).
    Arithmetic stays in the embeddings' float dtype (float64 reproduces insightface bit
    for bit at threshold boundaries; float32 is faster).
    """
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    emb = np.asarray(embeddings)
    if not np.issubdtype(emb.dtype, np.floating):
        emb = emb.astype(np.float64)
    if emb.ndim != 2:
        raise InputError(f"embeddings must be a 2-D array, got shape {emb.shape}")
    first = np.asarray(first, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    n = emb.shape[0]
    for name, idx in (("first", first), ("second", second)):
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise InputError(f"pair index {bad} ({name} column) outside embeddings rows 0..{n - 1}")
    out = np.empty(first.size, dtype=np.float64)
    if metric == "cosine":
        row_norm = np.maximum(np.linalg.norm(emb, axis=1), 1e-12)
    # small chunks keep the gathered rows in cache (1024 x 512 float32 = 2 MiB per side)
    for lo in range(0, first.size, chunk):
        a = emb[first[lo : lo + chunk]]
        b = emb[second[lo : lo + chunk]]
        if metric == "euclidean_sq":
            d = a - b
            out[lo : lo + chunk] = np.einsum("ij,ij->i", d, d)
        else:
            dot = np.einsum("ij,ij->i", a, b)
            norms = row_norm[first[lo : lo + chunk]] * row_norm[second[lo : lo + chunk]]
            out[lo : lo + chunk] = dot / norms
    return out


# ---------------------------------------------------------------- folds and counting


def contiguous_folds(n: int, k: int = 10) -> list[tuple[int, int]]:
    """(start, stop) of sklearn ``KFold(k, shuffle=False)`` test folds; k == 1 -> train = test."""
    if k < 1:
        raise InputError(f"number of folds must be >= 1, got {k}")
    if k > 1 and n < k:
        raise InputError(f"{n} pairs cannot be split into {k} folds")
    sizes = np.full(k, n // k, dtype=np.int64)
    sizes[: n % k] += 1
    stops = np.cumsum(sizes)
    return [(int(s - z), int(s)) for s, z in zip(stops, sizes)]


@dataclass
class FoldCounts:
    """For each fold and each threshold t: genuine / impostor pairs with ``dist < t``.

    ``below_gen[f, t]`` / ``below_imp[f, t]``; totals per fold in ``n_gen`` / ``n_imp``.
    """

    below_gen: np.ndarray
    below_imp: np.ndarray
    n_gen: np.ndarray
    n_imp: np.ndarray

    @classmethod
    def compute(cls, dist, issame, thresholds, folds) -> FoldCounts:
        dist = np.asarray(dist, dtype=np.float64)
        issame = np.asarray(issame, dtype=bool)
        thresholds = np.asarray(thresholds, dtype=np.float64)
        order = np.argsort(dist, kind="stable")
        # pos[t] = number of pairs with dist < thresholds[t] (all of them precede pos in `order`)
        pos = np.searchsorted(dist[order], thresholds, side="left")
        fold_of = np.empty(dist.size, dtype=np.int32)
        for f, (lo, hi) in enumerate(folds):
            fold_of[lo:hi] = f
        fold_sorted = fold_of[order]
        same_sorted = issame[order]
        k = len(folds)
        below_gen = np.empty((k, thresholds.size), dtype=np.int64)
        below_imp = np.empty((k, thresholds.size), dtype=np.int64)
        for f in range(k):
            in_fold = fold_sorted == f
            cum_gen = np.r_[0, np.cumsum(in_fold & same_sorted, dtype=np.int64)]
            cum_imp = np.r_[0, np.cumsum(in_fold & ~same_sorted, dtype=np.int64)]
            below_gen[f] = cum_gen[pos]
            below_imp[f] = cum_imp[pos]
        n_gen = np.array([issame[lo:hi].sum() for lo, hi in folds], dtype=np.int64)
        n_imp = np.array([hi - lo for lo, hi in folds], dtype=np.int64) - n_gen
        return cls(below_gen, below_imp, n_gen, n_imp)

    def train(self, f: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Counts over every fold except ``f`` (all folds when there is only one)."""
        if len(self.n_gen) == 1:
            return self.below_gen[0], self.below_imp[0], int(self.n_gen[0]), int(self.n_imp[0])
        bg = self.below_gen.sum(0) - self.below_gen[f]
        bi = self.below_imp.sum(0) - self.below_imp[f]
        return bg, bi, int(self.n_gen.sum() - self.n_gen[f]), int(self.n_imp.sum() - self.n_imp[f])


def _rate(num: np.ndarray, den) -> np.ndarray:
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.asarray(num, dtype=np.float64) / den
    return np.where(den == 0, 0.0, r)


def kfold_accuracy(dist, issame, thresholds, nfolds: int = 10):
    """Held-out accuracy per fold with the threshold chosen on the other folds.

    Returns ``(accuracy[k], best_threshold[k], tpr[T], fpr[T])`` where tpr/fpr are the
    fold-averaged held-out rates at every threshold (insightface's ROC arrays).
    """
    dist = np.asarray(dist, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    folds = contiguous_folds(dist.size, nfolds)
    c = FoldCounts.compute(dist, issame, thresholds, folds)
    acc = np.empty(len(folds))
    best_thr = np.empty(len(folds))
    for f, (lo, hi) in enumerate(folds):
        bg, bi, _, n_imp_train = c.train(f)
        correct_train = bg + (n_imp_train - bi)  # integer counts: argmax identical to acc argmax
        best = int(np.argmax(correct_train))
        best_thr[f] = thresholds[best]
        acc[f] = (c.below_gen[f, best] + c.n_imp[f] - c.below_imp[f, best]) / (hi - lo)
    tpr = _rate(c.below_gen, c.n_gen[:, None]).mean(0)
    fpr = _rate(c.below_imp, c.n_imp[:, None]).mean(0)
    return acc, best_thr, tpr, fpr


def interp_slinear(x: np.ndarray, y: np.ndarray, x_new: float) -> float:
    """``interp1d(x, y, kind="slinear")(x_new)`` as scipy <= 1.8 evaluated it.

    insightface feeds FAR values with many repeats (every threshold below the smallest
    impostor distance has FAR 0). scipy <= 1.8 built a linear B-spline on knots
    (x0, x..., x_last) and accepted that; scipy >= 1.9 raises "Expect x to not have
    duplicates" (scipy issue 21550), so the original script only runs on old scipy.
    The B-spline uses the segment that starts at the *last* repeat at or below
    ``x_new``; at the right end, the segment ending at the first copy of the maximum.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    order = np.argsort(x, kind="stable")  # interp1d sorts with mergesort (stable)
    x, y = x[order], y[order]
    if not (x[0] <= x_new <= x[-1]):
        raise InputError(f"value {x_new} outside interpolation range [{x[0]}, {x[-1]}]")
    if x[0] == x[-1]:
        return float(y[-1])
    i = int(np.searchsorted(x, x_new, side="right")) - 1
    if i == x.size - 1:  # x_new == max: the segment ending at the first copy of max
        i = int(np.searchsorted(x, x[-1], side="left")) - 1
    x0, x1, y0, y1 = x[i], x[i + 1], y[i], y[i + 1]
    return float(y0 + (x_new - x0) * (y1 - y0) / (x1 - x0))


def kfold_val_far(dist, issame, thresholds, far_target: float = 1e-3, nfolds: int = 10):
    """insightface ``calculate_val``: returns ``(val[k], far[k], threshold[k])``."""
    dist = np.asarray(dist, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    folds = contiguous_folds(dist.size, nfolds)
    c = FoldCounts.compute(dist, issame, thresholds, folds)
    val = np.empty(len(folds))
    far = np.empty(len(folds))
    thr = np.empty(len(folds))
    for f, (lo, hi) in enumerate(folds):
        _, bi, _, n_imp_train = c.train(f)
        far_train = _rate(bi, n_imp_train)
        t = (
            interp_slinear(far_train, thresholds, far_target)
            if far_train.max() >= far_target
            else 0.0
        )
        thr[f] = t
        d, s = dist[lo:hi], issame[lo:hi]
        accept = d < t
        val[f] = _rate(np.sum(accept & s), np.sum(s))
        far[f] = _rate(np.sum(accept & ~s), np.sum(~s))
    return val, far, thr


def exact_thresholds(dist) -> np.ndarray:
    """Every threshold that splits the sorted distances differently (for ``dist < t``)."""
    u = np.unique(np.asarray(dist, dtype=np.float64))
    if u.size == 0:
        return u
    mids = (u[:-1] + u[1:]) / 2
    mids = np.where(mids > u[:-1], mids, u[1:])  # adjacent floats: keep the split correct
    return np.r_[u[0], mids, np.nextafter(u[-1], np.inf)]


# ---------------------------------------------------------------- result


@dataclass
class VerificationResult:
    """Metrics of one pair set; ``to_dict`` is the JSON the CLI prints."""

    name: str
    metric: str
    num_pairs: int
    num_genuine: int
    num_impostor: int
    nfolds: int
    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    val: float
    val_std: float
    far: float
    far_target: float
    roc_auc: float
    eer: float
    tar_at_far: dict[str, float]
    fnmr_at_fmr_1pct: float
    xnorm: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"[{self.name}] {self.metric}: accuracy {self.accuracy * 100:.2f} +- "
            f"{self.accuracy_std * 100:.2f} % over {self.nfolds} folds, "
            f"VAL@FAR={self.far_target:g} {self.val * 100:.2f} +- {self.val_std * 100:.2f} % "
            f"(FAR {self.far * 100:.3f} %), AUC {self.roc_auc * 100:.2f} %, "
            f"EER {self.eer * 100:.2f} %, {self.num_pairs} pairs"
        )


def evaluate_scores(
    scores,
    issame,
    *,
    metric: str = "euclidean_sq",
    name: str = "pairs",
    nfolds: int = 10,
    far_target: float = 1e-3,
    tar_fars: Sequence[float] = roc.IJB_FARS,
    xnorm: float | None = None,
) -> VerificationResult:
    """All verification metrics for precomputed pair scores.

    ``metric="euclidean_sq"``: ``scores`` are squared distances of unit vectors and the
    insightface grids are used. ``metric="cosine"``: ``scores`` are similarities and every
    distinct score is a candidate threshold ("same" when similarity > threshold).
    """
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    scores = np.asarray(scores, dtype=np.float64).ravel()
    issame = np.asarray(issame, dtype=bool).ravel()
    if scores.size != issame.size:
        raise InputError(f"{scores.size} scores but {issame.size} labels")
    if scores.size == 0:
        raise InputError("no pairs to evaluate")
    if not np.isfinite(scores).all():
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise InputError(f"pair {bad} has a non-finite score {scores[bad]}")
    if issame.all() or not issame.any():
        raise InputError(
            f"pair labels must contain genuine and impostor pairs ({int(issame.sum())} of "
            f"{issame.size} genuine)"
        )

    if metric == "euclidean_sq":
        dist = scores
        acc_thr, val_thr = INSIGHTFACE_ACC_THRESHOLDS, INSIGHTFACE_VAL_THRESHOLDS
        similarity = -scores
    else:
        dist = -scores  # "same" when -cos < t  <=>  cos > -t
        acc_thr = val_thr = exact_thresholds(dist)
        similarity = scores

    acc, best_thr, _, _ = kfold_accuracy(dist, issame, acc_thr, nfolds)
    val, far, _ = kfold_val_far(dist, issame, val_thr, far_target, nfolds)
    if metric == "cosine":
        best_thr = -best_thr

    tars = roc.tar_at_far(issame, similarity, tar_fars)
    return VerificationResult(
        name=name,
        metric=metric,
        num_pairs=int(scores.size),
        num_genuine=int(issame.sum()),
        num_impostor=int((~issame).sum()),
        nfolds=nfolds,
        accuracy=float(acc.mean()),
        accuracy_std=float(acc.std()),
        fold_accuracies=[float(a) for a in acc],
        fold_thresholds=[float(t) for t in best_thr],
        val=float(val.mean()),
        val_std=float(val.std()),
        far=float(far.mean()),
        far_target=far_target,
        roc_auc=roc.auc(issame, similarity),
        eer=roc.eer(issame, similarity),
        tar_at_far={f"{k:g}": v for k, v in tars.items()},
        fnmr_at_fmr_1pct=roc.fnmr_at_fmr(issame, similarity, 0.01)[0],
        xnorm=xnorm,
    )


def evaluate_embeddings(
    embeddings: np.ndarray,
    issame,
    *,
    first: np.ndarray | None = None,
    second: np.ndarray | None = None,
    metric: str = "euclidean_sq",
    name: str = "pairs",
    nfolds: int = 10,
    normalize: bool = True,
    xnorm: float | None = None,
) -> VerificationResult:
    """Protocol on embeddings; pairs default to consecutive rows (2i, 2i+1) as in ``.bin`` files.

    ``normalize`` L2-normalises rows first (insightface does; pass flip-summed raw features).
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    if first is None or second is None:
        if emb.shape[0] != 2 * issame.size:
            raise InputError(f"{emb.shape[0]} embeddings for {issame.size} consecutive pairs")
        first = np.arange(0, emb.shape[0], 2)
        second = first + 1
    if normalize:
        emb = l2_normalize(emb)
    scores = pair_scores(emb, first, second, metric)
    return evaluate_scores(scores, issame, metric=metric, name=name, nfolds=nfolds, xnorm=xnorm)
