"""Identity-balanced batches (``data.sampler.kind: balanced``) by random access into shards.

A streamed batch holds whatever identities the shuffle buffer happens to mix, so on a
dataset of thousands of identities it rarely holds two images of one person. Pair
losses need such pairs in every batch: EKD's reference draws 8 identities x 4 images
plus 32 random images per GPU, DDL's draws pair datasets. Here every batch is ``P``
identities x ``K`` samples (without replacement while an identity has enough) followed
by ``random_fraction`` of the batch drawn uniformly.

Reads go through :class:`synthface.pipeline.shards.ShardIndexDataset` (one ``pread`` a
member; the offset index is built once from the tar headers). Like the stream, the
sampler is endless and seeded per (run seed, rank, segment start) by the caller and
per loader worker here, and every worker yields whole batches, so a batch never mixes
two workers' draws and a resumed run reads exactly what an uninterrupted one reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from synthface.pipeline.errors import ConfigError


def batch_layout(batch_size: int, per_identity: int, random_fraction: float) -> tuple[int, int]:
    """``(P identities, uniform draws)`` of one batch; ``P * per_identity + draws == batch``."""
    identities = round(batch_size * (1.0 - random_fraction)) // per_identity
    if identities < 2:
        raise ConfigError(
            f"data.sampler: a batch of {batch_size} with random_fraction {random_fraction} "
            f"leaves room for {identities} identities of {per_identity} samples (need >= 2)"
        )
    return identities, batch_size - identities * per_identity


class BalancedBatches(IterableDataset):
    """Samples in batch order: each run of ``batch_size`` samples is one balanced batch.

    Args:
        dataset_dir, split: the shard dataset.
        batch_size: samples per batch (the DataLoader's batch size must match).
        per_identity: ``K``.
        random_fraction: share of each batch drawn uniformly from all samples.
        seed: stream seed (the caller folds in the rank and segment).
        batches_per_worker: batches each loader worker yields before stopping.
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        split: str,
        *,
        batch_size: int,
        per_identity: int,
        random_fraction: float,
        seed: int,
        batches_per_worker: int,
    ) -> None:
        from synthface.pipeline.shards import ShardIndexDataset

        self.dataset = ShardIndexDataset(dataset_dir, split, decode=True)
        self.batch_size, self.per_identity = batch_size, per_identity
        self.identities, self.draws = batch_layout(batch_size, per_identity, random_fraction)
        self.seed, self.batches_per_worker = seed, batches_per_worker
        labels = self.dataset.labels
        self.order = np.argsort(labels, kind="stable")  # sample rows grouped by identity
        classes, self.starts, self.counts = np.unique(
            labels[self.order], return_index=True, return_counts=True
        )
        if len(classes) < self.identities:
            raise ConfigError(
                f"data.sampler: batches need {self.identities} identities but {dataset_dir} "
                f"has {len(classes)}; lower data.batch_size or raise per_identity"
            )

    def batch_indices(self, rng: np.random.Generator) -> np.ndarray:
        """Row indices of one batch: P identities x K, then the uniform draws."""
        picked = rng.choice(len(self.starts), size=self.identities, replace=False)
        rows = []
        for c in picked:
            n = int(self.counts[c])
            within = rng.choice(n, size=self.per_identity, replace=n < self.per_identity)
            rows.append(self.order[self.starts[c] + within])
        rows.append(rng.integers(0, len(self.dataset), size=self.draws))
        return np.concatenate(rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, worker]))
        for _ in range(self.batches_per_worker):
            for i in self.batch_indices(rng):
                yield self.dataset[int(i)]
