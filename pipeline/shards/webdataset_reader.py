"""Training-time streaming reader built from webdataset stages.

Stage order (per epoch, per process):

1. shard list — either the manifest order shuffled with ``seed + epoch`` *before* node
   splitting (so all ranks agree on the permutation and jointly cover every shard each
   epoch, but get different shards from epoch to epoch), or, with ``resampled=True``,
   shards drawn with replacement from a per-rank/per-worker stream (the maintainers'
   recommendation for multi-GPU: every rank sees an endless stream, cut by
   ``epoch_samples`` so all ranks run the same number of steps);
2. split by node (rank) and by DataLoader worker;
3. tar expansion and grouping by key (the fast walker of ``tarformat``);
4. a sample shuffle buffer — needed because shards hold whole identities;
5. decoding to the common sample dict; 6. the per-epoch sample limit.

Call ``set_epoch(e)`` before each epoch (like ``DistributedSampler``): DataLoader workers
get a fresh copy of the pipeline every epoch, so an in-process counter would not advance.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset

from synthface.pipeline.errors import ShardError
from synthface.pipeline.shards.decode import to_sample
from synthface.pipeline.shards.index_reader import iter_raw
from synthface.pipeline.shards.manifest import MANIFEST, foreign_hint, shard_paths


def _worker_info() -> tuple[int, int, int, int]:
    return wds.utils.pytorch_worker_info()


class _ShardSource(IterableDataset):
    """Yields ``{"url": ...}``: manifest order, or a seeded permutation per epoch."""

    def __init__(self, urls: list[str], shuffle: bool, seed: int):
        self.urls, self.shuffle, self.seed, self.epoch = urls, shuffle, seed, 0

    def __iter__(self):
        urls = list(self.urls)
        if self.shuffle:
            random.Random(f"shards/{self.seed}/{self.epoch}").shuffle(urls)
        for url in urls:
            yield {"url": url}


class _ResampledSource(IterableDataset):
    """Endless shard draws with replacement, seeded by (seed, epoch, rank, worker)."""

    def __init__(self, urls: list[str], seed: int):
        self.urls, self.seed, self.epoch = urls, seed, 0

    def __iter__(self):
        rank, _, worker, _ = _worker_info()
        rng = random.Random(f"resampled/{self.seed}/{self.epoch}/{rank}/{worker}")
        while True:
            yield {"url": self.urls[rng.randrange(len(self.urls))]}


class _SampleShuffle:
    """Shuffle buffer whose seed differs per epoch, rank and worker (deterministic)."""

    def __init__(self, bufsize: int, seed: int):
        self.bufsize, self.seed, self.epoch = bufsize, seed, 0

    def __call__(self, src):
        rank, _, worker, _ = _worker_info()
        rng = random.Random(f"samples/{self.seed}/{self.epoch}/{rank}/{worker}")
        buf: list = []
        for sample in src:
            if len(buf) < self.bufsize:
                buf.append(sample)
                continue
            i = rng.randrange(len(buf))
            buf[i], sample = sample, buf[i]
            yield sample
        rng.shuffle(buf)
        yield from buf


class _EpochLimit:
    """Stop after ``ceil(n / num_workers)`` samples per worker: ~``n`` per process per epoch."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, src):
        _, _, worker, num_workers = _worker_info()
        share = self.n // num_workers + (1 if worker < self.n % num_workers else 0)
        for i, sample in enumerate(src):
            if i >= share:
                return
            yield sample


class _ViewKeep:
    """Drop raw samples a view leaves out, before the shuffle buffer and any decoding."""

    def __init__(self, view: Any):
        self.view = view

    def __call__(self, src):
        for raw in src:
            if self.view.keep(raw["__key__"]):
                yield raw


def _expand_shards(src):
    """``{"url"}`` -> raw member dicts, with the fast USTAR walker instead of ``tarfile``."""
    for item in src:
        if Path(item["url"]).is_file():
            yield from iter_raw(Path(item["url"]))
        else:  # remote URL (http, pipe:, ...): webdataset's own opener and expander
            yield from wds.tarfile_samples([item])


class _ToSample:
    def __init__(self, decode: bool):
        self.decode = decode

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        return to_sample(raw, self.decode)


class ShardPipeline(wds.DataPipeline):
    """A ``webdataset.DataPipeline`` with ``set_epoch`` for the seeded stages."""

    def set_epoch(self, epoch: int) -> None:
        for stage in self.pipeline:
            if hasattr(stage, "epoch"):
                stage.epoch = epoch


def resolve_urls(urls_or_dir: Any, split: str = "train") -> list[str]:
    if isinstance(urls_or_dir, str | Path) and Path(urls_or_dir).is_dir():
        if not (Path(urls_or_dir) / MANIFEST).exists():
            hint = foreign_hint(Path(urls_or_dir))
            if hint:
                hint += ", or pass the .tar paths or brace URLs to stream them as they are"
            raise ShardError(
                f"{urls_or_dir}: no {MANIFEST} (not a finished synthface dataset){hint}"
            )
        return [str(p) for p in shard_paths(urls_or_dir, split)]
    if isinstance(urls_or_dir, str | Path):
        return list(wds.shardlists.expand_urls(str(urls_or_dir)))
    return [str(u) for u in urls_or_dir]


def make_webdataset(
    urls_or_dir: Any,
    *,
    shuffle_shards: bool = True,
    buffer: int = 1000,
    decode: bool = True,
    resampled: bool = False,
    epoch_samples: int | None = None,
    seed: int = 0,
    split_by_node: bool = True,
    split: str = "train",
    view: Any = None,
) -> ShardPipeline:
    """Streaming training pipeline over a dataset directory, a shard list or brace URLs.

    Yields ``{"__key__", "image", "label", "meta", "embedding"}``. ``buffer=0`` disables
    the sample shuffle. ``epoch_samples`` is per process (rank), spread over its workers;
    it is required with ``resampled=True`` (the stream is endless otherwise). ``view``
    (``synthface.pipeline.qc.View``): samples it leaves out are dropped before the
    shuffle buffer and the epoch count, labels become the view's contiguous labels.
    """
    urls = resolve_urls(urls_or_dir, split)
    if not urls:
        raise ShardError(f"{urls_or_dir}: no shards found")
    if resampled and epoch_samples is None:
        raise ShardError(
            "make_webdataset(resampled=True) needs epoch_samples (the stream is endless)"
        )
    stages: list[Any] = []
    if resampled:
        stages.append(_ResampledSource(urls, seed))
    else:
        stages.append(_ShardSource(urls, shuffle_shards, seed))
        stages.append(wds.split_by_node if split_by_node else wds.single_node_only)
        stages.append(wds.split_by_worker)
    stages.append(_expand_shards)
    if view is not None:
        stages.append(_ViewKeep(view))
    if buffer > 0:
        stages.append(_SampleShuffle(buffer, seed))
    stages.append(wds.map(_ToSample(decode)))
    if view is not None:
        stages.append(wds.map(view.relabel))
    if epoch_samples is not None:
        stages.append(_EpochLimit(epoch_samples))
    return ShardPipeline(*stages)
