"""Per-image identity conditions around an anchor (ID³ Algorithm 3).

Image j of identity i is conditioned on y_ij = c w_i + sqrt(1 - c^2) v, where w_i is the
anchor, c ~ U[lb, ub] and v is a random unit vector orthogonal to w_i, so cos(y_ij, w_i)
= c exactly and the direction of the deviation is uniform. The random stream of each
(identity, image) is seeded by (seed, identity, image), so a dataset can be generated in
any order or in resumed shards with the same result.
"""

from __future__ import annotations

import numpy as np


def per_image_rng(seed: int, identity: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(identity), int(index)])


def condition_around(
    anchor: np.ndarray, cos_bounds: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """One unit vector at cosine c ~ U[lb, ub] to ``anchor``; returns (y, c)."""
    w = np.asarray(anchor, dtype=np.float64)
    w = w / np.linalg.norm(w)
    lb, ub = cos_bounds
    c = float(rng.uniform(lb, ub)) if ub > lb else float(lb)
    v = rng.standard_normal(w.shape[0])
    v -= (v @ w) * w
    v /= np.linalg.norm(v)
    y = c * w + np.sqrt(max(0.0, 1.0 - c * c)) * v
    return (y / np.linalg.norm(y)).astype(np.float32), c


def identity_conditions(
    anchors: np.ndarray,
    per_identity: int,
    cos_bounds: tuple[float, float],
    *,
    seed: int = 0,
    first_identity: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, m, D) conditions and (N, m) cosines for anchors ``first_identity + 0..N-1``."""
    anchors = np.asarray(anchors)
    n, d = anchors.shape
    ys = np.empty((n, per_identity, d), dtype=np.float32)
    cs = np.empty((n, per_identity), dtype=np.float32)
    for i in range(n):
        for j in range(per_identity):
            ys[i, j], cs[i, j] = condition_around(
                anchors[i], cos_bounds, per_image_rng(seed, first_identity + i, j)
            )
    return ys, cs
