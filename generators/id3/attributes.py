"""Attribute priors for sampling: age and pose histograms fitted to the training data.

ID³ draws the attribute condition s of every generated image from the training set's
attribute distribution (it shows FFHQ pose and age histograms). Here each attribute gets
an independent histogram, counted over every sample the training run sees (fixed bin
edges from the config ranges, so memory does not grow with the data); sampling picks a bin by its frequency and
a uniform value inside it. The prior is a small JSON file stored with the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from synthface.pipeline.errors import InputError


class AttributePrior:
    def __init__(self, names: Sequence[str], edges: np.ndarray, counts: np.ndarray) -> None:
        self.names = list(names)
        self.edges = np.asarray(edges, dtype=np.float64)  # (A, bins+1)
        self.counts = np.asarray(counts, dtype=np.float64)  # (A, bins)
        if self.edges.shape[0] != len(self.names) or self.counts.shape[0] != len(self.names):
            raise InputError("attribute prior: names, edges and counts disagree")

    @classmethod
    def empty(
        cls, names: Sequence[str], ranges: Sequence[tuple[float, float]], bins: int = 36
    ) -> AttributePrior:
        edges = np.stack([np.linspace(lo, hi, bins + 1) for lo, hi in ranges])
        return cls(names, edges, np.zeros((len(names), bins)))

    def add(self, rows: Iterable[Sequence[float]]) -> None:
        """Count rows (values outside the range go to the end bins)."""
        bins = self.counts.shape[1]
        for row in rows:
            v = np.asarray(row, dtype=np.float64)
            for a in range(len(self.names)):
                i = int(np.searchsorted(self.edges[a], v[a], side="right")) - 1
                self.counts[a, min(max(i, 0), bins - 1)] += 1

    @property
    def total(self) -> int:
        return int(self.counts[0].sum()) if len(self.names) else 0

    @classmethod
    def fit(
        cls,
        rows: Iterable[Sequence[float]],
        names: Sequence[str],
        ranges: Sequence[tuple[float, float]],
        bins: int = 36,
    ) -> AttributePrior:
        prior = cls.empty(names, ranges, bins)
        prior.add(rows)
        if prior.total == 0:
            raise InputError("attribute prior: no training samples to fit it on")
        return prior

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((n, len(self.names)), dtype=np.float32)
        for a in range(len(self.names)):
            p = self.counts[a] / self.counts[a].sum()
            idx = rng.choice(len(p), size=n, p=p)
            lo, hi = self.edges[a, idx], self.edges[a, idx + 1]
            out[:, a] = lo + (hi - lo) * rng.random(n)
        return out

    def mean(self) -> np.ndarray:
        centers = 0.5 * (self.edges[:, 1:] + self.edges[:, :-1])
        return (centers * self.counts).sum(1) / self.counts.sum(1)

    def to_dict(self) -> dict:
        return {
            "names": self.names,
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> AttributePrior:
        try:
            return cls(data["names"], np.array(data["edges"]), np.array(data["counts"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"attribute prior: malformed ({exc})") from None
