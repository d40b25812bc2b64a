"""Training input: check the dataset against the config, then stream uint8 batches.

The stream is an *infinite* resampled WebDataset per process (shards drawn with
replacement, seeded per rank), so every rank always has a next batch: no rank runs dry
before the others, which is what deadlocks DDP with finite, unequal shard splits.
Training length is counted in optimizer steps, never in loader epochs.

The loader is deliberately not passed through ``accelerator.prepare``: for an
``IterableDataset`` accelerate would default to ``dispatch_batches=True`` (rank 0 reads
every batch and broadcasts it), which throws away the per-rank sharding. Batches move
to the device with ``.to(device)`` instead.

Exact resume: a loader is opened at step 0 and again after every periodic checkpoint,
seeded from ``(seed, rank, step)``. An uninterrupted run and a run resumed from that
checkpoint therefore read the same samples in the same order, without having to
fast-forward a streaming position (which WebDataset cannot restore).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from synthface.pipeline.errors import ConfigError, ShardError
from synthface.pipeline.qc.views import View, open_view, view_path
from synthface.pipeline.shards import make_webdataset, shard_paths, split_manifest
from synthface.recognition.config import DataConfig
from synthface.recognition.training.fields import Batch, Collate, SampleField
from synthface.recognition.training.sampler import BalancedBatches, ShuffledBatches


@dataclass(frozen=True)
class DatasetInfo:
    """What training reads: with a view, its identity and sample counts, not the dataset's."""

    path: Path
    num_classes: int
    num_samples: int
    shards: tuple[str, ...]
    view: View | None = None


def inspect_dataset(cfg: DataConfig) -> DatasetInfo:
    """Read the manifest; refuse a dataset that is empty or disagrees with the config.

    Shard files are checked against their manifest sizes (a stat, not a hash): the
    training stream draws shards with replacement forever, so an emptied or truncated
    shard would otherwise surface as a hang or a late decoding error, not a message.
    """
    path = Path(cfg.train)
    entry = split_manifest(path, cfg.split)
    where = f"{path}/dataset.json"
    num_classes = int(entry.get("num_identities", 0))
    num_samples = int(entry.get("num_samples", 0))
    view = None
    if getattr(cfg, "view", None):
        view = open_view(path, cfg.view, split=cfg.split, config_hash=entry.get("config_hash"))
        where = str(view_path(path, cfg.view))
        if view.num_identities < 2 or view.num_samples <= 0:
            raise ShardError(
                f"{where}: the view keeps {view.num_identities} of {num_classes} identities "
                f"and {view.num_samples} samples (training needs at least 2 identities)"
            )
        num_classes, num_samples = view.num_identities, view.num_samples
    if cfg.num_classes is not None and cfg.num_classes != num_classes:
        raise ConfigError(
            f"data.num_classes: config says {cfg.num_classes} but {where} "
            f"has {num_classes} identities in split {cfg.split!r}"
        )
    if num_samples <= 0 or not entry.get("shards"):
        raise ShardError(f"{where}: split {cfg.split!r} has no samples")
    if num_classes < 2:
        raise ShardError(f"{where}: {num_classes} identities (training needs at least 2)")
    shards = []
    for record, file in zip(entry["shards"], shard_paths(path, cfg.split)):
        if int(record.get("num_samples", 0)) <= 0:
            raise ShardError(f"{file}: shard is empty (0 samples in the manifest)")
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise ShardError(f"{file}: shard listed in the manifest is missing") from None
        if size != record.get("bytes"):
            raise ShardError(
                f"{file}: {size} bytes but the manifest says {record.get('bytes')} "
                "(truncated or replaced; run synthface shards verify)"
            )
        shards.append(str(file))
    return DatasetInfo(path, num_classes, num_samples, tuple(shards), view)


def segment_seed(seed: int, rank: int, step: int) -> int:
    """A 32-bit seed for the loader opened at ``step`` on ``rank``."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def open_batches(
    info: DatasetInfo,
    cfg: DataConfig,
    *,
    num_batches: int,
    seed: int,
    pin_memory: bool = False,
    fields: Mapping[str, SampleField] | None = None,
    run_seed: int | None = None,
    first_batch: int = 0,
    rank: int = 0,
    num_processes: int = 1,
) -> Iterator[Batch]:
    """At least ``num_batches`` :class:`Batch` es (uint8 images, labels, ``fields``).

    Every sampler spreads its per-process sample budget over the loader workers so
    that every worker yields the same whole number of batches: the round-robin order of
    worker batches (and thus the stream) is reproducible. The ``random`` sampler ignores
    the per-segment ``seed``: its epochs are permutations seeded by ``run_seed`` (default
    ``seed``), and the loader starts at the run's micro-batch ``first_batch``, reading
    ``rank``'s slice of each global batch of ``num_processes`` slices.
    """
    workers = max(1, cfg.num_workers)
    per_worker = -(-num_batches // workers)
    if cfg.sampler.kind == "balanced":
        dataset = BalancedBatches(
            info.path,
            cfg.split,
            batch_size=cfg.batch_size,
            per_identity=cfg.sampler.per_identity,
            random_fraction=cfg.sampler.random_fraction,
            seed=seed,
            batches_per_worker=per_worker,
            view=info.view,
        )
    elif cfg.sampler.kind == "random":
        dataset = ShuffledBatches(
            info.path,
            cfg.split,
            batch_size=cfg.batch_size,
            seed=seed if run_seed is None else run_seed,
            rank=rank,
            num_processes=num_processes,
            first_batch=first_batch,
            batches_per_worker=per_worker,
            num_samples=info.num_samples,
            view=info.view,
        )
    else:
        dataset = make_webdataset(
            list(info.shards),
            shuffle_shards=True,
            buffer=cfg.shuffle_buffer,
            decode=True,
            resampled=True,
            epoch_samples=per_worker * workers * cfg.batch_size,
            seed=seed,
            split_by_node=True,
            view=info.view,
        )
    generator = torch.Generator()
    generator.manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        collate_fn=Collate(fields),
        pin_memory=pin_memory,
        drop_last=True,
        generator=generator,
        prefetch_factor=4 if cfg.num_workers else None,
    )
    return _checked(iter(loader), info)


def to_model_input(
    images: torch.Tensor,
    input_size: int,
    *,
    augment=None,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 N x H x W x 3 on the device -> float N x 3 x S x S in [-1, 1] (arcface's scaling).

    Images of another size are resized (antialiased) to the backbone's input size; the
    augmentations, if any, work on [0, 1] values in between.
    """
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if tuple(x.shape[-2:]) != (input_size, input_size):
        x = F.interpolate(
            x, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False
        )
    if augment is not None:
        x = augment(x, generator)
    x = x.sub_(0.5).div_(0.5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _checked(batches: Iterator[Batch], info: DatasetInfo) -> Iterator[Batch]:
    first = True
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            if first:
                raise ShardError(f"{info.path}: the shards yielded no samples") from None
            return
        first = False
        labels = batch.labels
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= info.num_classes):
            bad = int(labels.max()) if int(labels.max()) >= info.num_classes else int(labels.min())
            raise ShardError(
                f"{info.path}: label {bad} outside 0..{info.num_classes - 1} "
                "(the shards disagree with dataset.json)"
            )
        yield batch
