"""Verification-metric speed: 1M pairs with every metric, against a per-threshold loop baseline.

Run:  OMP_NUM_THREADS=1 .venv/bin/python bench/eval_speed.py [--pairs 1000000] [--dim 512]

Prints, for N pairs:
  * pair scoring from N x dim embeddings (float32 and float64 rows),
  * ``evaluate_scores`` with all metrics (10-fold accuracy on the insightface grid,
    VAL@FAR=1e-3 on the 4000-step grid, AUC, EER, TAR@FAR 1e-6..1e-1, FNMR@FMR=1 %),
    for squared Euclidean and for the cosine exact sweep;
  * the same 10-fold accuracy computed the way insightface's ``calculate_roc`` does it
    (a numpy pass over the pairs for every fold x threshold) on a subset, and the speed
    ratio of our sort-based counting on that same subset.
Target from the issue: N = 1M with all metrics in < 10 s on the project's CPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from synthface.recognition.evaluation.verification import (
    INSIGHTFACE_ACC_THRESHOLDS,
    contiguous_folds,
    evaluate_scores,
    kfold_accuracy,
    l2_normalize,
    pair_scores,
)


def loop_baseline(dist, issame, thresholds, nfolds=10):
    """insightface-style: for every fold and threshold, a full numpy pass over the pairs."""
    acc = []
    for lo, hi in contiguous_folds(dist.size, nfolds):
        train = np.ones(dist.size, bool)
        train[lo:hi] = False
        d_tr, s_tr = dist[train], issame[train]
        accs = [np.mean((d_tr < t) == s_tr) for t in thresholds]
        best = thresholds[int(np.argmax(accs))]
        acc.append(np.mean((dist[lo:hi] < best) == issame[lo:hi]))
    return np.array(acc)


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--images", type=int, default=100_000, help="embedding rows")
    ap.add_argument("--baseline-pairs", type=int, default=0, help="0 = all pairs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    ident = rng.integers(0, args.images // 10, args.images)
    centers = rng.normal(size=(args.images // 10, args.dim)).astype(np.float32)
    emb = l2_normalize(
        centers[ident] + 3.0 * rng.normal(size=(args.images, args.dim)).astype(np.float32)
    )
    first = rng.integers(0, args.images, args.pairs)
    # half genuine: pick a partner with the same identity when one exists
    order = np.argsort(ident, kind="stable")
    starts = np.searchsorted(ident[order], ident[first])
    counts = np.bincount(ident, minlength=args.images // 10)[ident[first]]
    partner = order[starts + rng.integers(0, np.maximum(counts, 1))]
    second = np.where(
        rng.random(args.pairs) < 0.5, partner, rng.integers(0, args.images, args.pairs)
    )
    issame = ident[first] == ident[second]

    print(
        f"pairs {args.pairs:,}  dim {args.dim}  rows {args.images:,}  genuine {issame.mean():.3f}"
    )
    d32, t32 = timed(pair_scores, emb, first, second, "euclidean_sq")
    _, t64 = timed(pair_scores, emb.astype(np.float64), first, second, "euclidean_sq")
    cos, tcos = timed(pair_scores, emb, first, second, "cosine")
    print(f"pair scoring  float32 {t32:6.2f} s   float64 {t64:6.2f} s   cosine f32 {tcos:6.2f} s")

    r, te = timed(evaluate_scores, d32, issame, metric="euclidean_sq")
    print(f"all metrics, euclidean_sq (insightface grids): {te:6.2f} s   acc {r.accuracy:.4f}")
    r, tc = timed(evaluate_scores, cos, issame, metric="cosine")
    print(f"all metrics, cosine (exact sweep):             {tc:6.2f} s   acc {r.accuracy:.4f}")
    total = t32 + te
    print(
        f"TOTAL 1M-pair path (float32 scoring + all metrics, euclidean): {total:.2f} s "
        f"(target < 10 s: {'met' if total < 10 else 'NOT met'})"
    )

    n = args.baseline_pairs or args.pairs
    base, tb = timed(loop_baseline, d32[:n], issame[:n], INSIGHTFACE_ACC_THRESHOLDS)
    ours, to = timed(kfold_accuracy, d32[:n], issame[:n], INSIGHTFACE_ACC_THRESHOLDS)
    assert np.array_equal(base, ours[0]), "baseline and sort-based fold accuracies differ"
    print(
        f"10-fold accuracy on {n:,} pairs: loop baseline {tb:.2f} s, ours {to:.3f} s, "
        f"speed-up x{tb / to:.0f} (identical fold accuracies)"
    )


if __name__ == "__main__":
    main()
