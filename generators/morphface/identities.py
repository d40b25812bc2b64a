"""New identities from embeddings of unlabelled synthetic faces, kept apart by margins.

MorphFace takes its virtual identities from "novel identities of unlabeled synthetic
faces" rather than from points of the embedding sphere. Here the unlabelled faces are
the generator's own samples from the empty context (no identity, no style): faces of
nobody in particular, drawn from the distribution the generator learnt. The conditioning
encoder embeds them, and a greedy pass in seed order keeps a candidate only if

* its cosine to every identity kept so far is at most ``max_cos`` (new identities stay
  apart from each other), and
* its cosine to every training identity is at most ``max_cos_training`` (no new identity
  is a training person again).

Such embeddings lie where the encoder puts real faces, which whole-sphere Tammes anchors
do not (docs/benchmarks.md, "Anchors for new identities"); Tammes anchors remain the
default of ``generator sample`` and an option. The paper's margins are unpublished.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from synthface.pipeline.errors import InputError


def candidate_seeds(seed: int, start: int, count: int) -> list[int]:
    """Seeds of candidate faces ``start .. start+count-1`` (independent of batching)."""
    return [
        int(np.random.default_rng([int(seed), 7, i]).integers(0, 2**62))
        for i in range(start, start + count)
    ]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class MarginFilter:
    """Greedy selection of candidates that keep the two margins (module docstring)."""

    def __init__(self, max_cos: float, training: np.ndarray | None, max_cos_training: float):
        self.max_cos = max_cos
        self.training = None if training is None else _unit(training)
        self.max_cos_training = max_cos_training
        self._kept: np.ndarray | None = None  # grown by doubling, rows [:count] valid
        self.count = 0
        self.seen = 0
        self.rejected_near_training = 0
        self.rejected_near_new = 0

    @property
    def kept(self) -> np.ndarray:
        return np.empty((0, 0)) if self._kept is None else self._kept[: self.count]

    def offer(self, embeddings: np.ndarray, limit: int) -> None:
        """Consider candidates in order until ``limit`` identities are kept."""
        for e in _unit(embeddings):
            if self.count >= limit:
                return
            self.seen += 1
            if self.training is not None and (self.training @ e).max() > self.max_cos_training:
                self.rejected_near_training += 1
                continue
            if self.count and (self.kept @ e).max() > self.max_cos:
                self.rejected_near_new += 1
                continue
            if self._kept is None:
                self._kept = np.empty((16, e.shape[0]))
            elif self.count == len(self._kept):
                self._kept = np.concatenate([self._kept, np.empty_like(self._kept)])
            self._kept[self.count] = e
            self.count += 1


def novel_identities(
    generator,
    encoder,
    n: int,
    *,
    training: np.ndarray | None = None,
    max_cos: float | None = None,
    max_cos_training: float | None = None,
    seed: int = 0,
    batch: int = 64,
    max_candidates: int | None = None,
    steps: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, dict]:
    """``n`` unit embeddings of empty-context faces, kept apart by the margins.

    ``generator``: a MorphFace generator (``generate_unconditional``); ``encoder``: its
    conditioning encoder (``embed_uint8``), so the identities live in the space the
    generator is conditioned on; ``training``: embeddings of the training identities
    (rows; per image or per identity). Margins default to the generator's
    ``morphface.new_identity_max_cos`` / ``new_identity_max_cos_training``. Raises
    :class:`InputError` when ``max_candidates`` (default 20 n) faces do not yield ``n``.
    """
    cfg = generator.config.morphface
    max_cos = cfg.new_identity_max_cos if max_cos is None else max_cos
    if max_cos_training is None:
        max_cos_training = cfg.new_identity_max_cos_training
    limit = max_candidates or 20 * n
    filt = MarginFilter(max_cos, training, max_cos_training)
    drawn = 0
    while filt.count < n and drawn < limit:
        count = min(batch, limit - drawn)
        faces = generator.generate_unconditional(
            candidate_seeds(seed, drawn, count), steps=steps, batch_size=batch
        )
        filt.offer(encoder.embed_uint8(faces), n)
        drawn += count
        if progress is not None:
            progress(drawn, filt.count)
    if filt.count < n:
        raise InputError(
            f"new identities: {filt.count} of {n} found among {drawn} candidate faces "
            f"(max cos {max_cos} between new identities, {max_cos_training} to training "
            f"identities; {filt.rejected_near_new} too close to a new one, "
            f"{filt.rejected_near_training} too close to a training one): loosen a margin "
            "or allow more candidates"
        )
    kept = filt.kept.astype(np.float32)
    sims = filt.kept @ filt.kept.T
    np.fill_diagonal(sims, -1.0)
    stats = {
        "identities": n,
        "candidates": filt.seen,
        "rejected_near_new": filt.rejected_near_new,
        "rejected_near_training": filt.rejected_near_training,
        "max_cos_between_new": round(float(sims.max()), 4) if n > 1 else None,
        "max_cos_to_training": (
            round(float((filt.kept @ filt.training.T).max()), 4)
            if filt.training is not None
            else None
        ),
    }
    return kept, stats
