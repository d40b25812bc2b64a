"""Subject-aware style prior: who a virtual subject is, then how their images vary.

MorphFace samples styles "from a real-world prior distribution" that models both
subject distinctiveness and intra-subject variation (the exact form is unpublished; this
is the form suggested in the project's reference notes). Fitted on labelled real data:

* per subject k, the mean mu_k of its images' style parameters;
* ``within``: the pooled within-subject covariance
  Sigma_w = sum_k sum_j (x_kj - mu_k)(x_kj - mu_k)^T / (N - K);
* ``between``: the covariance of subject means. The raw covariance of the mu_k overstates
  the spread of true subject means by Sigma_w / n_k (each mu_k averages only n_k noisy
  images), so Sigma_b = Cov(mu_k) - mean_k(1/n_k) Sigma_w, projected onto the positive
  semi-definite cone (the classical one-way random-effects estimator);
* ``mean``: the mean of subject means (every subject counts once, however many images).

A virtual subject draws its own mean mu_i ~ N(mean, Sigma_b); each of its images draws
x_ij = mu_i + delta, delta ~ N(0, Sigma_w). Parameters that never vary within a real
subject (3DMM shape, or the world's identity geometry) get zero within-variance, so a
virtual subject keeps its face shape across images while pose, expression and lighting
vary. ``subject_aware=False`` is the ablation: every image independently from
N(mean, Sigma_b + Sigma_w), which has the same marginal distribution but no subjects.
Samples are clipped to the range seen in the data.

Fitting streams: memory is O(subjects x P + P^2), never O(images).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from synthface.pipeline.errors import InputError

FORMAT = "synthface-style-prior"


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """L with L L^T = cov projected onto the PSD cone.

    Eigenvalues below 1e-9 of the largest are rounding noise of exact zeros (a parameter
    that never varies within a subject) and are set to 0, so such a parameter stays
    exactly fixed rather than jittering by 1e-7.
    """
    vals, vecs = np.linalg.eigh(0.5 * (cov + cov.T))
    vals = np.where(vals > 1e-9 * max(float(vals.max()), 0.0), vals, 0.0)
    return vecs * np.sqrt(vals)


def _psd(cov: np.ndarray) -> np.ndarray:
    root = _psd_sqrt(cov)
    return root @ root.T


class StylePriorFitter:
    """Streaming sufficient statistics: per-subject count and sum, global scatter."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        p = len(self.names)
        self.ref: np.ndarray | None = None  # first row: centring keeps the sums accurate
        self.counts: dict[int, int] = {}
        self.sums: dict[int, np.ndarray] = {}
        self.scatter = np.zeros((p, p))
        self.low = np.full(p, np.inf)
        self.high = np.full(p, -np.inf)

    def add(self, params: np.ndarray, labels: Sequence[int]) -> None:
        x = np.asarray(params, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.names) or len(labels) != x.shape[0]:
            raise InputError(
                f"style prior: got parameters {tuple(x.shape)} and {len(labels)} labels, "
                f"expected (N, {len(self.names)}) and N"
            )
        if not np.isfinite(x).all():
            raise InputError("style prior: parameters contain NaN or infinite values")
        if self.ref is None and len(x):
            self.ref = x[0].copy()
        c = x - self.ref
        self.scatter += c.T @ c
        self.low = np.minimum(self.low, x.min(0, initial=np.inf))
        self.high = np.maximum(self.high, x.max(0, initial=-np.inf))
        for row, label in zip(c, labels):
            k = int(label)
            if k in self.counts:
                self.counts[k] += 1
                self.sums[k] += row
            else:
                self.counts[k] = 1
                self.sums[k] = row.copy()

    def finish(self) -> StylePrior:
        k = len(self.counts)
        n = sum(self.counts.values())
        if k < 2 or n - k < 1:
            raise InputError(
                f"style prior: needs >= 2 labelled subjects and at least one subject with "
                f">= 2 images (got {k} subjects, {n} images)"
            )
        labels = sorted(self.counts)
        counts = np.array([self.counts[i] for i in labels], dtype=np.float64)
        means = np.stack([self.sums[i] for i in labels]) / counts[:, None]  # centred
        within = (self.scatter - (means * counts[:, None]).T @ means) / (n - k)
        within = _psd(within)
        raw_between = np.cov(means, rowvar=False, ddof=1).reshape(within.shape)
        between = _psd(raw_between - np.mean(1.0 / counts) * within)
        return StylePrior(
            self.names,
            mean=means.mean(0) + self.ref,
            between=between,
            within=within,
            low=self.low,
            high=self.high,
            subjects=k,
            images=n,
        )


class StylePrior:
    """N(mean, between) over subject means and N(0, within) around them (module docstring)."""

    def __init__(
        self,
        names: Sequence[str],
        *,
        mean: np.ndarray,
        between: np.ndarray,
        within: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
        subjects: int,
        images: int,
    ) -> None:
        self.names = list(names)
        p = len(self.names)
        self.mean = np.asarray(mean, dtype=np.float64).reshape(p)
        self.between = np.asarray(between, dtype=np.float64).reshape(p, p)
        self.within = np.asarray(within, dtype=np.float64).reshape(p, p)
        self.low = np.asarray(low, dtype=np.float64).reshape(p)
        self.high = np.asarray(high, dtype=np.float64).reshape(p)
        self.subjects = int(subjects)
        self.images = int(images)
        self._root_b = _psd_sqrt(self.between)
        self._root_w = _psd_sqrt(self.within)
        self._root_t = _psd_sqrt(self.between + self.within)

    @classmethod
    def fit(cls, params: np.ndarray, labels: Sequence[int], names: Sequence[str]) -> StylePrior:
        fitter = StylePriorFitter(names)
        fitter.add(params, labels)
        return fitter.finish()

    @property
    def dim(self) -> int:
        return len(self.names)

    def _clip(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.low, self.high)

    def subject_mean(self, rng: np.random.Generator) -> np.ndarray:
        """A virtual subject's own mean parameters, unclipped (P,)."""
        return self.mean + self._root_b @ rng.standard_normal(self.dim)

    def image(
        self, subject_mean: np.ndarray | None, rng: np.random.Generator, *, subject_aware=True
    ) -> np.ndarray:
        """One image's parameters around ``subject_mean`` (or subject-agnostic), clipped."""
        if subject_aware:
            x = subject_mean + self._root_w @ rng.standard_normal(self.dim)
        else:
            x = self.mean + self._root_t @ rng.standard_normal(self.dim)
        return self._clip(x)

    def sample(
        self, subjects: int, per_subject: int, rng: np.random.Generator, *, subject_aware=True
    ) -> np.ndarray:
        """(subjects, per_subject, P) parameters drawn from one generator."""
        out = np.empty((subjects, per_subject, self.dim))
        for i in range(subjects):
            mu = self.subject_mean(rng) if subject_aware else None
            for j in range(per_subject):
                out[i, j] = self.image(mu, rng, subject_aware=subject_aware)
        return out

    # ----------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": 1,
            "names": self.names,
            "subjects": self.subjects,
            "images": self.images,
            "mean": self.mean.tolist(),
            "between": self.between.tolist(),
            "within": self.within.tolist(),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
        }

    def to_json_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1) + "\n").encode()

    @classmethod
    def from_dict(cls, data: dict, source: str = "style prior") -> StylePrior:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"{source}: not a {FORMAT} file")
        try:
            names = [str(n) for n in data["names"]]
            p = len(names)
            arrays = {}
            for key, shape in (
                ("mean", (p,)),
                ("low", (p,)),
                ("high", (p,)),
                ("between", (p, p)),
                ("within", (p, p)),
            ):
                arr = np.asarray(data[key], dtype=np.float64)
                if arr.shape != shape or not np.isfinite(arr).all():
                    raise ValueError(f"{key} must be finite with shape {shape}, got {arr.shape}")
                arrays[key] = arr
            return cls(names, subjects=int(data["subjects"]), images=int(data["images"]), **arrays)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source}: malformed ({exc})") from None

    @classmethod
    def from_json_bytes(cls, payload: bytes, source: str = "style prior") -> StylePrior:
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{source}: unreadable ({exc})") from None
        return cls.from_dict(data, source)
