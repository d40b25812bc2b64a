"""Training samples for the generators, per rank: identity-set shards or image folders.

Every training process (rank r of W) reads its own part of the data, and where a
resumed run starts reading is computed, not replayed:

* **Map-style sources** (an :class:`ImageFolder`, a list of sample dicts): epoch ``e``
  is one permutation shared by all ranks (seeded by ``(seed, e)``); rank r takes every
  W-th entry of it from position r. Rank streams are therefore disjoint within an epoch,
  and position ``k`` of a rank's stream is an index computation: resuming jumps there.
* **Shard datasets** (:class:`ShardSource`): the stream is cut into *segments* of
  ``segment_steps`` optimizer steps (the checkpoint interval), as the recognition
  trainer does. Each segment assigns the shards to ranks afresh (a permutation seeded by
  ``(seed, segment)``, rank r taking every W-th shard; with fewer shards than ranks, every
  W-th sample instead), so the ranks read disjoint data within a segment, and opens a
  fresh stream seeded by ``(seed, segment, rank)``. A run resumed from a checkpoint on
  the grid starts a new segment and reads nothing twice; a resume inside a segment
  drops the samples already used *before decoding them* (tar members are read and
  thrown away, no JPEG is decoded).

Within a rank, a shuffle buffer of ``data.shuffle_buffer`` encoded samples mixes the
identities (shards hold whole identities in order); only samples leaving the buffer are
decoded. Memory does not grow with the dataset: one shard is open at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthface.generators.config import GeneratorConfig
from synthface.pipeline.errors import InputError, ShardError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class ImageFolder(Sequence):
    """``root/<identity>/<image>`` -> sample dicts; identities numbered in sorted order.

    Optional ``<image>.json`` next to an image is its ``meta`` (e.g. ``attributes``).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: image folder not found")
        classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.items: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            for f in sorted((self.root / name).iterdir()):
                if f.suffix.lower() in IMAGE_EXTS:
                    self.items.append((f, label))
        if not self.items:
            raise InputError(f"{self.root}: no images found in identity sub-folders")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[override]
        from synthface.pipeline.limits import open_image

        path, label = self.items[i]
        image = np.asarray(open_image(path))
        side = path.with_suffix(path.suffix + ".json")
        meta = json.loads(side.read_text()) if side.is_file() else {}
        return {
            "__key__": str(path),
            "image": image,
            "label": label,
            "meta": meta,
            "embedding": None,
        }


def sequence_stream(
    source: Sequence[dict[str, Any]],
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start: int = 0,
) -> Iterator[dict[str, Any]]:
    """Rank ``rank``'s endless stream over a map-style source, from its position ``start``."""
    n = len(source)
    if n == 0:
        raise InputError("training data is empty")
    if n < world_size:
        raise InputError(f"{n} training samples cannot be split over {world_size} processes")
    share = len(range(rank, n, world_size))  # this rank's entries per epoch
    epoch, offset = divmod(start, share)
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(n)[rank::world_size]
        for i in order[offset:]:
            yield source[int(i)]
        epoch, offset = epoch + 1, 0


class ShardSource:
    """A finished shard dataset (``dataset.json`` + tars), streamed per rank and segment."""

    def __init__(self, path: str | Path, *, split: str = "train", shuffle_buffer: int = 1000):
        from synthface.pipeline.shards import shard_paths, split_manifest

        self.path = Path(path)
        entry = split_manifest(self.path, split)
        self.shards = [str(p) for p in shard_paths(self.path, split)]
        self.counts = [int(r.get("num_samples", 0)) for r in entry.get("shards", [])]
        if not self.shards or sum(self.counts) == 0:
            raise InputError(f"{self.path}/dataset.json: split {split!r} has no samples")
        self.shuffle_buffer = max(1, int(shuffle_buffer))

    def _raw(self, seed: int, segment: int, rank: int, world: int) -> Iterator[dict[str, Any]]:
        """Undecoded samples of this rank in this segment, cycling over its part."""
        from synthface.pipeline.shards.index_reader import iter_raw

        n = len(self.shards)
        by_shard = n >= world
        mine = np.random.default_rng([seed, segment]).permutation(n)[rank::world]
        if by_shard and not sum(self.counts[int(i)] for i in mine):
            raise InputError(f"{self.path}: the shards given to process {rank} are all empty")
        if not by_shard and sum(self.counts) < world:
            raise InputError(f"{self.path}: fewer samples than the {world} training processes")
        cycle = 0
        while True:
            if by_shard:  # this rank's shards, in a new order every pass
                order = np.random.default_rng([seed, segment, rank, cycle]).permutation(mine)
            else:  # every rank walks all shards in one order per segment, keeping its samples
                order = np.random.default_rng([seed, segment]).permutation(n)
            counter = 0
            for sid in order:
                path = Path(self.shards[int(sid)])
                try:
                    for raw in iter_raw(path):
                        counter += 1
                        if by_shard or (counter - 1) % world == rank:
                            yield raw
                except OSError as exc:
                    raise ShardError(
                        f"{path}: cannot read shard ({exc}); run `synthface shards verify`"
                    ) from None
            cycle += 1

    def stream(
        self, *, seed: int, segment: int, rank: int = 0, world_size: int = 1, skip: int = 0
    ) -> Iterator[dict[str, Any]]:
        """Decoded samples of ``segment`` for ``rank``, after dropping ``skip`` undecoded ones."""
        from synthface.pipeline.shards.decode import to_sample

        rng = np.random.default_rng([seed, segment, rank, 1 << 20])
        buf: list[dict[str, Any]] = []
        dropped = 0
        for raw in self._raw(seed, segment, rank, world_size):
            if len(buf) < self.shuffle_buffer:
                buf.append(raw)
                continue
            i = int(rng.integers(len(buf)))
            buf[i], raw = raw, buf[i]
            if dropped < skip:
                dropped += 1
                continue
            yield to_sample(raw, decode=True)


def training_batches(
    source,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    segment_steps: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[list[dict[str, Any]]]:
    """Rank ``rank``'s batches from optimizer step ``start_step`` on (one list per step)."""
    if isinstance(source, Sequence):
        stream = sequence_stream(
            source, seed=seed, rank=rank, world_size=world_size, start=start_step * batch_size
        )
        while True:
            yield [next(stream) for _ in range(batch_size)]
    if not isinstance(source, ShardSource):
        raise TypeError(f"training data must be a sequence or a ShardSource, got {type(source)}")
    step = start_step
    while True:
        segment = step // segment_steps
        end = (segment + 1) * segment_steps
        stream = source.stream(
            seed=seed,
            segment=segment,
            rank=rank,
            world_size=world_size,
            skip=(step - segment * segment_steps) * batch_size,
        )
        for _ in range(step, end):
            yield [next(stream) for _ in range(batch_size)]
        step = end


def open_source(cfg: GeneratorConfig):
    """The configured training data (``data.source`` / ``data.path``)."""
    d = cfg.data
    if d.path is None:
        raise InputError("data.path is not set in the generator config")
    if d.source == "folder":
        return ImageFolder(d.path)
    return ShardSource(d.path, shuffle_buffer=d.shuffle_buffer)


def attribute_row(meta: dict, names: Sequence[str], key: str) -> list[float]:
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    row = []
    for name in names:
        if not isinstance(attrs, dict) or name not in attrs:
            raise InputError(f"sample {key!r}: meta['attributes'] has no {name!r}")
        value = float(attrs[name])
        if not np.isfinite(value):
            raise InputError(f"sample {key!r}: attribute {name!r} is {value}")
        row.append(value)
    return row
