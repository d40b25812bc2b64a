"""Streaming dataset producer: samples in, identity-set shards out, manifest at the end.

Converters do not know identity sizes in advance, so the writer buffers exactly one
identity (bounded by the largest identity, not the dataset) and decides at each identity
boundary whether it still fits the current shard or opens the next one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.pipeline.shards.manifest import begin_dataset, finalize_dataset, release_dataset
from synthface.pipeline.shards.sample import Sample
from synthface.pipeline.shards.writer import (
    SHARDS_DIR,
    ShardWriter,
    completed_shards,
    record_path,
    shard_name,
)


class DatasetWriter:
    """Add samples grouped by identity, identities ascending from 0; ``close()`` finalizes."""

    def __init__(
        self,
        dataset_dir: str | Path,
        *,
        config: dict[str, Any],
        split: str = "train",
        max_samples: int = 10000,
        max_bytes: int = 1 << 30,
    ):
        if max_samples < 1 or max_bytes < 1:
            raise InputError(
                f"shard targets must be >= 1 (max_samples={max_samples}, max_bytes={max_bytes})"
            )
        self.dataset_dir = Path(dataset_dir)
        self.config = config
        self.split = split
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self._created = not self.dataset_dir.exists()
        begin_dataset(self.dataset_dir, config=config, split=split)
        self._buffer: list[Sample] = []
        self._identity = -1
        self._shard: ShardWriter | None = None
        self._shard_index = 0
        self._shard_samples = 0
        self._shard_bytes = 0
        self.records: list = []

    def add(self, sample: Sample) -> None:
        if sample.identity == self._identity + 1:
            self._flush_identity()
            self._identity = sample.identity
        elif sample.identity != self._identity:
            expected = "0" if self._identity < 0 else f"{self._identity} or {self._identity + 1}"
            raise InputError(
                f"sample {sample.identity}/{sample.index}: identities must arrive grouped, ascending "
                f"and contiguous (expected {expected}, got {sample.identity})"
            )
        self._buffer.append(sample)

    def _flush_identity(self) -> None:
        if not self._buffer:
            return
        n = len(self._buffer)
        size = sum(len(s.image) + 2048 for s in self._buffer)  # ~ headers + json per sample
        if self._shard is not None and (
            self._shard_samples + n > self.max_samples or self._shard_bytes + size > self.max_bytes
        ):
            self._close_shard()
        if self._shard is None:
            self._shard = ShardWriter(self.dataset_dir, self._shard_index, split=self.split)
        try:
            for s in self._buffer:
                self._shard.add(s)
        except BaseException:
            self.abort()
            raise
        self._shard_samples += n
        self._shard_bytes = self._shard.bytes_written
        self._buffer = []

    def _close_shard(self) -> None:
        assert self._shard is not None
        self.records.append(self._shard.close())
        self._shard = None
        self._shard_index += 1
        self._shard_samples = 0
        self._shard_bytes = 0

    def _drop_stale_shards(self) -> None:
        """Remove shards past the last one written (left by an earlier run on other input)."""
        for index in completed_shards(self.dataset_dir, split=self.split, check_sha=False):
            if index >= self._shard_index:
                record_path(self.dataset_dir, self.split, index).unlink(missing_ok=True)
                (self.dataset_dir / SHARDS_DIR / shard_name(self.split, index)).unlink(
                    missing_ok=True
                )

    def abort(self) -> None:
        """Drop the shard in progress (complete shards stay, and count for a re-run).

        A run that wrote no shard at all gives up its claim on the directory (and removes
        the directory if it made it and it is empty), so it can be reused with other input.
        """
        if self._shard is not None:
            self._shard.abort()
            self._shard = None
        self._buffer = []
        released = release_dataset(self.dataset_dir, config=self.config, split=self.split)
        if released and self._created:
            with contextlib.suppress(OSError):
                self.dataset_dir.rmdir()

    def close(
        self, identity_arrays: dict[str, np.ndarray] | None = None, extra: dict | None = None
    ) -> dict:
        self._flush_identity()
        if self._shard is None:
            raise InputError(f"{self.dataset_dir}: no samples were written (empty source)")
        self._close_shard()
        self._drop_stale_shards()
        return finalize_dataset(
            self.dataset_dir,
            config=self.config,
            num_classes=self._identity + 1,
            identity_arrays=identity_arrays,
            split=self.split,
            extra=extra,
        )

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
