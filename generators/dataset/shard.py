"""One shard, the unit of work and of resume: its stages, overlapped, then its files.

``produce_shard`` generates every image of its identities, embeds and scores them, and
writes the QC sidecar and then the shard atomically. A shard that its record and tar
vouch for is skipped, so re-runs and retried tasks only redo missing or corrupt shards;
everything a shard contains is a function of the config and the shard's index, so the
finished dataset is byte-identical to an uninterrupted run on any runner.

With ``runner.overlap`` the device samples batch k+1 while one helper thread runs QC,
JPEG encoding and sample assembly of batch k (torch and Pillow release the GIL). The
queue is bounded (two batches waiting at most, so memory does not grow with the shard)
and results are kept in batch order, so the bytes are those of the sequential path.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.generators.dataset import stages
from synthface.generators.dataset.config import GenerateConfig
from synthface.generators.dataset.placement import (
    Placement,
    read_provenance,
    worker_placement,
    write_provenance,
)
from synthface.generators.dataset.plan import ShardWork, anchors_path, planned_checkpoint_sha256
from synthface.generators.dataset.producer import Producer, borrow_producer, return_producer
from synthface.pipeline.atomic import file_sha256
from synthface.pipeline.errors import ConfigError, InputError
from synthface.pipeline.qc import read_shard_qc
from synthface.pipeline.shards.writer import SHARDS_DIR, ShardRecord, read_record, record_path

# Batches sampled but not yet through QC/encoding: bounds memory, keeps the device busy.
OVERLAP_DEPTH = 2


@dataclass(frozen=True)
class ShardResult:
    index: int
    num_samples: int
    sha256: str
    skipped: bool
    seconds: float

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "num_samples": self.num_samples,
            "sha256": self.sha256,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
        }


def shard_complete(dataset_dir: Path, split: str, index: int) -> ShardRecord | None:
    """The record of shard ``index`` if its tar matches it (size and sha256), else ``None``.

    ``completed_shards`` answers the same for every shard at once; a shard task only needs
    its own, and hashing all shards in every task would make a run quadratic in I/O.
    """
    record = read_record(record_path(dataset_dir, split, index))
    if record is None or record.index != index or record.split != split:
        return None
    tar = dataset_dir / SHARDS_DIR / record.name
    try:
        if tar.stat().st_size != record.bytes or file_sha256(tar)[0] != record.sha256:
            return None
    except OSError:
        return None
    return record


class _InOrder:
    """Runs ``fn(*args)`` now (sequential) or in one helper thread, ``depth`` jobs at
    most in flight; ``results`` come back in submission order either way."""

    def __init__(self, overlap: bool, torch_threads: int, depth: int = OVERLAP_DEPTH) -> None:
        self.depth = depth
        self.done: list = []
        self.pending: deque[Future] = deque()
        self.pool = None
        if overlap:
            import torch

            # A new thread starts with the default intra-op thread count; the QC embedding's
            # float reductions (stored as .npy members) must use the worker's fixed count.
            self.pool = ThreadPoolExecutor(
                1,
                thread_name_prefix="shard-post",
                initializer=torch.set_num_threads,
                initargs=(torch_threads,),
            )

    def submit(self, fn: Callable, *args) -> None:
        if self.pool is None:
            self.done.append(fn(*args))
            return
        while len(self.pending) >= self.depth:
            self.done.append(self.pending.popleft().result())
        self.pending.append(self.pool.submit(fn, *args))

    def results(self) -> list:
        while self.pending:
            self.done.append(self.pending.popleft().result())
        return self.done

    def __enter__(self) -> _InOrder:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _check_planned_checkpoint(dataset_dir: Path, cfg, worker_sha: str, placement) -> None:
    """A worker whose checkpoint differs from the plan's (another copy at the same path on
    a remote host, weights overwritten after the plan) would write shards of another
    model into this dataset: refuse instead."""
    planned = planned_checkpoint_sha256(dataset_dir)
    if planned is not None and planned != worker_sha:
        raise InputError(
            f"generator.checkpoint: {cfg.generator.checkpoint} on {placement.host} hashes to "
            f"{worker_sha[:12]}, but {dataset_dir} was planned with {planned[:12]}: the "
            "checkpoint changed after the plan, or this host has another copy"
        )


def _check_one_precision(cfg, dataset_dir: Path, work: ShardWork, precision: str) -> None:
    """``precision: auto`` resolves per worker (bf16 on a GPU, fp32 on the CPU): a dataset
    resumed on another kind of device, or a Dask worker without a GPU, would mix the two
    under one config hash. Refuse, naming the shards made the other way."""
    if cfg.generator.precision != "auto":
        return
    others = {
        r.get("precision"): r["shard"]
        for r in read_provenance(dataset_dir, work.split)
        if r.get("shard") != work.index and r.get("precision")
    }
    clash = {p: i for p, i in others.items() if p != precision}
    if clash:
        (other, shard), *_ = clash.items()
        raise ConfigError(
            f"generator.precision: auto is {precision} on this worker, but shard {shard} of "
            f"{dataset_dir} was made in {other}: set generator.precision explicitly, or "
            "resume on the kind of device that began the dataset"
        )


def produce_shard(
    cfg: GenerateConfig,
    work: ShardWork,
    *,
    producer: Producer | None = None,
    placement: Placement | None = None,
    progress: Callable[[int], None] | None = None,
    overlap: bool | None = None,
) -> ShardResult:
    """Generate, embed, score and write shard ``work.index`` (skipped when already complete).

    ``placement`` (default: resolved here) is the device and worker; it is logged in
    ``provenance/`` after the shard is written. ``progress(n)`` is called as each batch
    of ``n`` images is sampled. ``overlap`` overrides ``runner.overlap``.
    """
    dataset_dir = Path(cfg.output.dir)
    done = shard_complete(dataset_dir, work.split, work.index)
    if done is not None and read_shard_qc(dataset_dir, work.split, work.index) is not None:
        return ShardResult(work.index, done.num_samples, done.sha256, True, 0.0)
    started, t0 = time.time(), time.perf_counter()
    if placement is None:
        placement = worker_placement(cfg.generator.device, cfg.generator.allow_cpu_fallback)
    borrowed = producer is None
    if borrowed:
        producer = borrow_producer(cfg, placement.device)
        _check_planned_checkpoint(dataset_dir, cfg, producer.key[1], placement)
    import torch

    # a pooled model may come back after another caller changed the thread count, and
    # the thread count can change float results: every shard samples at the configured one
    torch.set_num_threads(cfg.runner.torch_threads)
    precision = stages.resolve_precision(cfg.generator.precision, placement.device)
    _check_one_precision(cfg, dataset_dir, work, precision)
    gen = producer.generator
    anchors = np.load(anchors_path(dataset_dir), mmap_mode="r", allow_pickle=False)
    qc_anchors = anchors if producer.anchors_comparable else None
    batches, batch_size = stages.batch_plan(cfg, work, placement.device)

    def finish(batch: stages.Batch):
        vectors, quality = stages.qc(producer, cfg, batch)
        return stages.samples(cfg, gen, batch, vectors, quality, qc_anchors)

    use_overlap = cfg.runner.overlap if overlap is None else overlap
    with _InOrder(use_overlap, cfg.runner.torch_threads) as post:
        for ids in batches:
            cond = stages.conditions(gen, anchors, ids, work)
            batch = stages.images(
                gen, cfg, ids, cond, batch_size=batch_size, device=placement.device
            )
            post.submit(finish, batch)
            if progress is not None:
                progress(len(batch.images))
        finished = post.results()
    scores = [s for batch_scores, _ in finished for s in batch_scores]
    shard_samples = [s for _, batch_samples in finished for s in batch_samples]
    record = stages.write(dataset_dir, work, scores, shard_samples)
    seconds = time.perf_counter() - t0
    write_provenance(
        dataset_dir,
        work.split,
        work.index,
        placement,
        num_samples=record.num_samples,
        sha256=record.sha256,
        started=started,
        seconds=seconds,
        precision=precision,
    )
    if borrowed:  # only after success: a shard that raised may leave the model mid-swap
        return_producer(producer)
    return ShardResult(work.index, record.num_samples, record.sha256, False, seconds)
