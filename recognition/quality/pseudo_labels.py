"""SDD-FIQA pseudo-labels: quality as the distance between a sample's genuine and impostor scores.

A face image is useful for recognition when its similarities to other images of the
same person are well separated from its similarities to other people. SDD-FIQA
(Ou et al., CVPR 2021) turns that into a label without any human rating, on any
labelled identity set (a generated one is labelled by construction):

1. embed every sample with a recognizer (L2-normalised);
2. for sample ``x_i``, draw ``m = 24`` other samples of its identity and 24 samples of
   other identities; ``S+`` and ``S-`` are their cosines to ``x_i``;
3. ``Q_k(x_i) = WD(S+, S-)``, the 1-Wasserstein distance between the two empirical
   distributions (for equal sample counts, the mean absolute difference of the sorted
   values), min-max normalised over the dataset to [0, 100];
4. repeat ``K = 12`` times with fresh draws and average: ``Q = (1/K) Σ_k Q_k``.

Identities with a single sample have no genuine scores; they get the lowest quality of
their round. Draws are seeded, so labels are a function of the embeddings and the seed.
Memory is one block of gathered rows (``block x m x D``), never ``N x N``.
"""

from __future__ import annotations

import numpy as np

from synthface.pipeline.errors import InputError

SAMPLES = 24
REPEATS = 12


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise 1-Wasserstein distance of equal-size samples (``... x m`` each)."""
    return np.abs(np.sort(a, axis=-1) - np.sort(b, axis=-1)).mean(axis=-1)


def _impostors(
    rng: np.random.Generator, labels: np.ndarray, rows: np.ndarray, m: int
) -> np.ndarray:
    """``len(rows) x m`` sample indices of other identities (redrawn until they are)."""
    n = len(labels)
    idx = rng.integers(0, n, size=(len(rows), m))
    for _ in range(64):
        clash = labels[idx] == labels[rows][:, None]
        if not clash.any():
            return idx
        idx[clash] = rng.integers(0, n, size=int(clash.sum()))
    raise InputError("pseudo-labels: could not draw impostors (is there only one identity?)")


def pseudo_labels(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    samples: int = SAMPLES,
    repeats: int = REPEATS,
    seed: int = 0,
    block: int = 1024,
) -> np.ndarray:
    """SDD-FIQA quality in [0, 100] for every row of ``embeddings`` (N x D, unit rows).

    Args:
        embeddings: N x D L2-normalised embeddings (float32; may be a memory map).
        labels: N identity labels.
        samples: ``m``, genuine and impostor scores drawn per sample and round.
        repeats: ``K``, rounds averaged.
        seed: seed of the draws.
        block: samples scored at once (memory ``block x m x D`` floats, twice).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if embeddings.ndim != 2 or embeddings.shape[0] != n:
        raise InputError(f"pseudo-labels: {embeddings.shape} embeddings for {n} labels")
    if len(np.unique(labels)) < 2:
        raise InputError("pseudo-labels: need at least two identities")
    order = np.argsort(labels, kind="stable")
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    cls = np.searchsorted(classes, labels)  # class slot of every sample
    position = np.empty(n, dtype=np.int64)  # its position inside its class block
    position[order] = np.arange(n) - np.repeat(starts, counts)
    total = np.zeros(n, dtype=np.float64)
    for k in range(repeats):
        rng = np.random.default_rng(np.random.SeedSequence([seed, k]))
        q = np.full(n, np.nan)
        for lo in range(0, n, block):
            rows = np.arange(lo, min(lo + block, n))
            c = counts[cls[rows]]
            ok = c > 1
            # genuine: a uniform other position in the class (skip the sample itself)
            r = (rng.random((len(rows), samples)) * np.maximum(c - 1, 1)[:, None]).astype(np.int64)
            r += r >= position[rows][:, None]
            genuine = order[starts[cls[rows]][:, None] + np.minimum(r, c[:, None] - 1)]
            impostor = _impostors(rng, labels, rows, samples)
            e = np.asarray(embeddings[rows], dtype=np.float32)
            s_pos = np.einsum(
                "bd,bmd->bm",
                e,
                np.asarray(embeddings[genuine.ravel()]).reshape(len(rows), samples, -1),
            )
            s_neg = np.einsum(
                "bd,bmd->bm",
                e,
                np.asarray(embeddings[impostor.ravel()]).reshape(len(rows), samples, -1),
            )
            q[rows[ok]] = wasserstein_1d(s_pos[ok], s_neg[ok])
        finite = np.isfinite(q)
        if not finite.any():
            raise InputError("pseudo-labels: every identity has a single sample")
        lo_q, hi_q = q[finite].min(), q[finite].max()
        q = np.where(finite, q, lo_q)
        total += 100.0 * (q - lo_q) / max(hi_q - lo_q, 1e-12)
    return (total / repeats).astype(np.float32)
