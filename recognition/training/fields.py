"""Per-sample values that training objectives need next to each image and label.

A *field* is a picklable callable ``field(sample) -> float | 1-d array`` applied in the
loader workers to the reader's sample dict (``__key__``, ``label``, ``meta``); the
collate function stacks each field into one tensor of the batch. Objectives name the
fields they need (``Objective.sample_fields``), so the loop never knows what they are:
a DDL hard-sample flag from the metadata, an EKD teacher embedding from a cache, an
SDD-FIQA pseudo-label.

Values computed per sample *key* live beside the dataset as a keyed array: ``X.npy``
(N rows) plus ``X.keys.txt`` (one shard key per row), the layout that ``synthface
recognition embed --shards`` writes. :class:`KeyedArray` reads one through a memory map,
so its size never enters a worker's memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from synthface.pipeline.errors import InputError, ShardError
from synthface.pipeline.shards.sample import MAX_INDEX, parse_key

SampleField = Callable[[dict[str, Any]], Any]


def key_code(key: str) -> int | None:
    """``identity * 10000 + index`` of a shard key (its sort order), ``None`` if malformed."""
    parsed = parse_key(key)
    return None if parsed is None else parsed[0] * (MAX_INDEX + 1) + parsed[1]


def keys_path(array_path: str | Path) -> Path:
    """``X.keys.txt`` beside ``X.npy``."""
    return Path(array_path).with_suffix(".keys.txt")


class KeyedArray:
    """Rows of ``X.npy`` looked up by sample key (``X.keys.txt`` holds one key per row).

    The keys are held as sorted int64 codes (8 bytes a sample); the values stay on disk
    behind a memory map opened lazily in each process. ``field`` names the config field
    the file came from, for error messages.
    """

    def __init__(self, path: str | Path, *, field: str) -> None:
        self.path, self.field = Path(path), field
        kpath = keys_path(self.path)
        if not self.path.is_file():
            raise InputError(f"{field}: {self.path}: no such file")
        if not kpath.is_file():
            raise InputError(f"{field}: {kpath}: missing (one sample key per row of {self.path})")
        keys = kpath.read_text().split()
        codes = np.array([-1 if (c := key_code(k)) is None else c for k in keys], np.int64)
        if (codes < 0).any():
            bad = keys[int(np.flatnonzero(codes < 0)[0])]
            raise InputError(f"{field}: {kpath}: {bad!r} is not a shard key (IIIIIIII/JJJJ)")
        try:
            rows = np.load(self.path, mmap_mode="r", allow_pickle=False).shape[0]
        except (OSError, ValueError) as exc:
            raise InputError(f"{field}: {self.path}: unreadable array ({exc})") from None
        if rows != len(codes):
            raise InputError(f"{field}: {self.path}: {rows} rows but {len(codes)} keys in {kpath}")
        order = np.argsort(codes, kind="stable")
        self.codes, self.rows = codes[order], order
        if len(self.codes) > 1 and (np.diff(self.codes) == 0).any():
            dup = int(self.codes[int(np.flatnonzero(np.diff(self.codes) == 0)[0])])
            raise InputError(f"{field}: {kpath}: key {dup // 10000:08d}/{dup % 10000:04d} twice")
        self._values: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def values(self) -> np.ndarray:
        if self._values is None:
            self._values = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._values

    def row(self, key: str) -> int:
        code = key_code(key)
        i = int(np.searchsorted(self.codes, code if code is not None else -1))
        if code is None or i >= len(self.codes) or self.codes[i] != code:
            raise ShardError(f"{self.field}: {self.path} has no row for sample {key!r}")
        return int(self.rows[i])

    def __call__(self, sample: dict[str, Any]) -> np.ndarray:
        return np.asarray(self.values[self.row(sample["__key__"])], dtype=np.float32)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_values"] = None  # each worker maps the file itself
        return state


class Batch(NamedTuple):
    """One loader batch: uint8 N x H x W x 3 images, int64 labels, and the named fields."""

    images: torch.Tensor
    labels: torch.Tensor
    fields: dict[str, torch.Tensor]

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.fields.items()},
        )


class Collate:
    """``collate_fn``: stack images, labels and every field (picklable for workers)."""

    def __init__(self, fields: Mapping[str, SampleField] | None = None) -> None:
        self.fields = dict(fields or {})

    def __call__(self, samples: list[dict]) -> Batch:
        first = samples[0]["image"].shape
        for s in samples:
            if s["image"].shape != first:
                raise ShardError(
                    f"sample {s.get('__key__')}: image shape {s['image'].shape} differs from "
                    f"{first}; training needs one image size per dataset"
                )
        images = torch.from_numpy(np.stack([s["image"] for s in samples]))
        labels = torch.tensor([int(s["label"]) for s in samples], dtype=torch.int64)
        fields = {
            name: torch.from_numpy(np.stack([np.asarray(fn(s), dtype=np.float32) for s in samples]))
            for name, fn in self.fields.items()
        }
        return Batch(images, labels, fields)
