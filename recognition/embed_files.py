"""Embed an image folder or a shard dataset into ``E.npy`` without holding the images.

Outputs, written atomically (temporary names, renamed only when complete):

* ``E.npy``: ``N x D`` float32, L2-normalised, in input order;
* ``E.keys.txt``: one line per row, the image's path relative to the folder (sorted) or
  the shard sample key (manifest order);
* ``E.labels.npy``: ``N`` int64 identity labels (shard input only).

Images stream through in batches; embeddings go to a temporary raw file first because
the row count of a shard stream is only known at its end, so memory stays flat.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from synthface.pipeline.atomic import atomic_path, atomic_write
from synthface.pipeline.errors import InputError
from synthface.pipeline.limits import open_image
from synthface.pipeline.progress import progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under ``root`` (recursive), sorted by relative POSIX path."""
    base = Path(root)
    if not base.is_dir():
        raise InputError(f"{base}: no such image directory")
    files = [p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InputError(f"{base}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return sorted(files, key=lambda p: p.relative_to(base).as_posix())


def _read_image(path: Path) -> np.ndarray:
    return np.asarray(open_image(path))


def _fit(img: np.ndarray, size: tuple[int, int], resize: bool, key: str) -> np.ndarray:
    if tuple(img.shape[:2]) == tuple(size):
        return img
    if not resize:
        raise InputError(
            f"{key}: image is {img.shape[0]}x{img.shape[1]}, model takes {size[0]}x{size[1]} "
            "(align the faces first, or pass --resize)"
        )
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))


def iter_image_dir(
    root: str | os.PathLike, files: list[Path] | None = None
) -> Iterator[tuple[str, np.ndarray, int | None]]:
    base = Path(root)
    for path in list_images(base) if files is None else files:
        yield path.relative_to(base).as_posix(), _read_image(path), None


def iter_shard_dir(
    dataset_dir: str | os.PathLike, split: str = "train"
) -> Iterator[tuple[str, np.ndarray, int | None]]:
    from synthface.pipeline.shards import iter_samples

    for sample in iter_samples(dataset_dir, split=split):
        yield sample["__key__"], sample["image"], int(sample["label"])


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def embed_to_npy(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    shards: str | os.PathLike | None = None,
    split: str = "train",
    flip: bool = False,
    device: str = "cpu",
    batch_size: int = 64,
    resize: bool = False,
) -> dict[str, Any]:
    """Embed ``images`` (a folder) or ``shards`` (a dataset directory) with ``model``.

    Returns a summary: ``{"out", "count", "dim", "model", "flip", "keys", "labels"}``
    (``keys``/``labels`` are the side-file paths).
    """
    from synthface.recognition.embedder import load_embedder

    if (images is None) == (shards is None):
        raise InputError("give exactly one of --images DIR or --shards DIR")
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    embedder = load_embedder(model, device=device)
    if images is not None:
        files = list_images(images)
        total, source = len(files), iter_image_dir(images, files)
    else:
        from synthface.pipeline.shards import split_manifest

        total = int(split_manifest(shards, split)["num_samples"])
        source = iter_shard_dir(shards, split)
    out_path = Path(out)
    if out_path.suffix != ".npy":
        raise InputError(f"{out_path}: output must end in .npy")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    keys_path = out_path.with_suffix(".keys.txt")
    labels_path = out_path.with_suffix(".labels.npy")
    count = 0
    labels: list[int] = []
    # Published in reverse order of entry when the block completes: labels, keys, then
    # E.npy last, so an E.npy present means the set is complete.
    with (
        atomic_path(out_path) as tmp_npy,
        atomic_path(keys_path) as tmp_keys,
        tempfile.TemporaryFile(dir=out_path.parent) as raw,  # rows, until the count is known
    ):
        with (
            open(tmp_keys, "w", encoding="utf-8") as keys,
            progress_bar(total, desc="embedding") as bar,
        ):
            for batch in _batches(source, batch_size):
                arr = np.stack([_fit(img, embedder.input_size, resize, k) for k, img, _ in batch])
                raw.write(embedder.embed(arr, flip=flip).tobytes())
                keys.writelines(f"{k}\n" for k, _, _ in batch)
                labels.extend(lab for _, _, lab in batch if lab is not None)
                count += len(batch)
                bar.update(len(batch))
        if count == 0:
            raise InputError(f"{shards}: dataset has no samples")
        raw.flush()
        dst = np.lib.format.open_memmap(
            tmp_npy, mode="w+", dtype=np.float32, shape=(count, embedder.dim)
        )
        src = np.memmap(raw, dtype=np.float32, mode="r", shape=(count, embedder.dim))
        for start in range(0, count, 65536):
            dst[start : start + 65536] = src[start : start + 65536]
        dst.flush()
        del dst, src
        if shards is not None:
            with atomic_write(labels_path) as f:
                np.save(f, np.asarray(labels, dtype=np.int64), allow_pickle=False)
    return {
        "out": str(out_path),
        "count": count,
        "dim": embedder.dim,
        "model": str(model),
        "flip": flip,
        "keys": str(keys_path),
        "labels": str(labels_path) if shards is not None else None,
    }
