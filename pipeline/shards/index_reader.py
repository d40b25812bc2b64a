"""Map-style random access over a dataset directory through an own in-memory offset index.

The index is built once per dataset object by walking tar *headers* only (the data is
skipped with seeks), so opening a dataset costs one header read per member, not a read of
the images. Items are then single ``pread`` calls on per-process file descriptors, which
are dropped on pickling so each DataLoader worker opens its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from synthface.pipeline.errors import ShardError
from synthface.pipeline.shards.decode import to_sample
from synthface.pipeline.shards.manifest import shard_paths
from synthface.pipeline.shards.sample import parse_key
from synthface.pipeline.shards.tarformat import walk

MEMBER_EXTS = ("cls", "jpg", "png", "json", "npy")


def split_member(name: str) -> tuple[str, str]:
    """WebDataset's rule: key = up to the first dot of the last path component."""
    head, _, last = name.rpartition("/")
    stem, _, ext = last.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def _index_shard(path: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    try:
        with open(path, "rb") as f:
            for name, offset, size, _ in walk(f, str(path), read=False):
                key, ext = split_member(name)
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][ext] = (offset, size)
    except OSError as exc:
        raise ShardError(
            f"{path}: cannot index shard ({exc}); run `synthface shards verify`"
        ) from None
    return samples


class ShardIndexDataset(Dataset):
    """``ds[i]`` -> ``{"__key__", "image", "label", "meta", "embedding"}`` in manifest order.

    With ``view`` (``synthface.pipeline.qc.View``) the index holds only the samples the
    view keeps and ``labels`` / ``ds[i]["label"]`` are the view's contiguous labels, so
    every random-access sampler built on it sees the view and nothing else.
    """

    def __init__(
        self, dataset_dir: str | Path, split: str = "train", decode: bool = True, view: Any = None
    ):
        self.paths = [str(p) for p in shard_paths(dataset_dir, split)]
        self.decode = decode
        self.view = view
        shard_ids, keys, offsets = [], [], []
        for sid, path in enumerate(self.paths):
            for key, members in _index_shard(Path(path)):
                if view is not None and not view.keep(key):
                    continue
                shard_ids.append(sid)
                keys.append(key)
                offsets.append([members.get(ext, (-1, 0)) for ext in MEMBER_EXTS])
        self.shard_ids = np.asarray(shard_ids, dtype=np.int32)
        self.keys = np.asarray(keys)
        self.offsets = np.asarray(offsets, dtype=np.int64).reshape(len(keys), len(MEMBER_EXTS), 2)
        parsed = [parse_key(k) for k in keys]
        if any(p is None for p in parsed):
            bad = keys[parsed.index(None)]
            raise ShardError(
                f"{dataset_dir}: malformed sample key {bad!r}; run `synthface shards verify`"
            )
        self.labels = np.asarray([p[0] for p in parsed], dtype=np.int64)
        if view is not None:
            self.labels = np.asarray([view.label(int(i)) for i in self.labels], dtype=np.int64)
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def _fd(self, sid: int) -> int:
        fd = self._fds.get(sid)
        if fd is None:
            fd = self._fds[sid] = os.open(self.paths[sid], os.O_RDONLY)
        return fd

    def raw(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        i = int(i) % len(self)
        sid = int(self.shard_ids[i])
        fd = self._fd(sid)
        raw: dict[str, Any] = {"__key__": str(self.keys[i]), "__url__": self.paths[sid]}
        for ext, (offset, size) in zip(MEMBER_EXTS, self.offsets[i].tolist()):
            if offset >= 0:
                raw[ext] = os.pread(fd, size, offset)
        return raw

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = to_sample(self.raw(i), self.decode)
        return sample if self.view is None else self.view.relabel(sample)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()


def iter_raw(path: Path) -> Iterator[dict[str, Any]]:
    """Raw member dicts of one shard, in tar order (streaming, one sample in memory)."""
    current: dict[str, Any] | None = None
    with open(path, "rb", buffering=1 << 20) as f:
        for name, _, _, data in walk(f, str(path)):
            key, ext = split_member(name)
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": str(path)}
            current[ext] = data
    if current is not None:
        yield current


def iter_samples(
    dataset_dir: str | Path, split: str = "train", decode: bool = True
) -> Iterator[dict[str, Any]]:
    """Every sample once, in manifest order, one shard open at a time."""
    for path in shard_paths(dataset_dir, split):
        try:
            for raw in iter_raw(path):
                yield to_sample(raw, decode)
        except OSError as exc:
            raise ShardError(
                f"{path}: cannot read shard ({exc}); run `synthface shards verify`"
            ) from None
