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

Uniform batches (``data.sampler.kind: random``, :class:`ShuffledBatches`) are what
arcface_torch's ``DistributedSampler`` over an indexed RecordIO gives: every epoch is one
permutation of the whole set, so any batch mixes identities from everywhere, whatever
the shard layout. The permutation is a pure function of (run seed, epoch), and the run's
micro-batches are laid end to end over the concatenated epochs, each global micro-batch
split into per-rank slices: ranks read disjoint parts, every sample is read exactly once
per epoch across ranks, and the position of any step is known without replaying the
ones before it (resume is exact by construction).
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
        view: a ``synthface.pipeline.qc.View``: only its samples, with its labels.
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
        view: Any = None,
    ) -> None:
        from synthface.pipeline.shards import ShardIndexDataset

        self.dataset = ShardIndexDataset(dataset_dir, split, decode=True, view=view)
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


def epoch_permutation(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """The sample order of one epoch; every rank and worker computes the same one.

    int32 where it fits: each loader worker holds one, and a 40M-sample set would
    otherwise cost 320 MB a worker.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5EED]))
    dtype = np.int32 if num_samples < 2**31 else np.int64
    order = np.arange(num_samples, dtype=dtype)
    rng.shuffle(order)
    return order


class EpochOrder:
    """Sample indices at positions of the endless sequence epoch 0, epoch 1, ...

    Keeps the last permutation it built: a batch straddles at most two epochs and a
    worker walks forward, so at most one permutation is built per epoch and worker.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples, self.seed = num_samples, seed
        self._cached: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, epoch_permutation(self.seed, epoch, self.num_samples))
        return self._cached[1]

    def take(self, start: int, count: int) -> np.ndarray:
        """Indices at positions ``start .. start + count - 1``."""
        parts, pos, stop = [], start, start + count
        while pos < stop:
            epoch, offset = divmod(pos, self.num_samples)
            n = min(stop - pos, self.num_samples - offset)
            parts.append(self.permutation(epoch)[offset : offset + n])
            pos += n
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def rank_slice(micro_batch: int, rank: int, batch_size: int, num_processes: int) -> int:
    """First position of ``rank``'s part of the run's ``micro_batch``-th global batch."""
    return (micro_batch * num_processes + rank) * batch_size


class ShuffledBatches(IterableDataset):
    """Samples in batch order; batches are slices of per-epoch permutations of the set.

    Args:
        dataset_dir, split: the shard dataset.
        batch_size: samples per batch and process (the DataLoader's batch size must match).
        seed: the *run* seed (not a per-rank or per-segment one: every rank must compute
            the same permutations).
        rank, num_processes: this process's share of each global batch.
        first_batch: the run's micro-batch index this loader starts at (``step * accum``).
        batches_per_worker: batches each loader worker yields before stopping.
        num_samples: the manifest's count (the view's, with ``view``), checked against
            the shards' index.
        view: a ``synthface.pipeline.qc.View``: only its samples, with its labels.
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        split: str,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        num_processes: int = 1,
        first_batch: int = 0,
        batches_per_worker: int,
        num_samples: int | None = None,
        view: Any = None,
    ) -> None:
        from synthface.pipeline.errors import ShardError
        from synthface.pipeline.shards import ShardIndexDataset

        if not 0 <= rank < num_processes:
            raise ConfigError(f"rank {rank} outside 0..{num_processes - 1}")
        self.dataset = ShardIndexDataset(dataset_dir, split, decode=True, view=view)
        if num_samples is not None and len(self.dataset) != num_samples:
            listed = f"{dataset_dir}/dataset.json" if view is None else f"{dataset_dir}'s view"
            raise ShardError(
                f"{listed}: split {split!r} lists {num_samples} samples "
                f"but its shards hold {len(self.dataset)}; run synthface shards verify"
            )
        self.order = EpochOrder(len(self.dataset), seed)
        self.batch_size, self.rank, self.num_processes = batch_size, rank, num_processes
        self.first_batch, self.batches_per_worker = first_batch, batches_per_worker

    def batch_indices(self, micro_batch: int) -> np.ndarray:
        """This rank's sample indices of the run's ``micro_batch``-th global batch."""
        start = rank_slice(micro_batch, self.rank, self.batch_size, self.num_processes)
        return self.order.take(start, self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # the DataLoader returns worker batches round-robin: loader batch j comes from
        # worker j % W, so worker w serves the segment's batches w, w + W, w + 2W, ...
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for j in range(self.batches_per_worker):
            for i in self.batch_indices(self.first_batch + j * workers + worker):
                yield self.dataset[int(i)]
