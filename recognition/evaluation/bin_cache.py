"""Verification ``.bin`` sets decoded once into a memory-mapped uint8 array on disk.

Training validation embeds the same 12,000-odd JPEGs per set at every validation step;
decoding them is most of a pass's time on CPU and stalls every rank that waits for it.
:func:`open_decoded_bin` decodes a set once into ``CACHE/<stem>-<sha256[:16]>-<size>.npy``
(N x H x W x 3 uint8) plus ``.issame.npy`` and afterwards opens it with
``mmap_mode="r"``: a pass reads pixels from the page cache, and the processes of a
machine share those pages instead of each holding a decoded copy.

The name carries the content hash of the ``.bin`` and the decode size, so a replaced file
or another size finds no entry and is decoded afresh (an entry that does not match its
set's shape is rebuilt too). Both files are written under temporary names and renamed
into place, labels before images: a crashed build leaves no entry that looks complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_path, file_sha256
from synthface.pipeline.errors import InputError
from synthface.pipeline.limits import open_image
from synthface.pipeline.parallel import ordered_map

__all__ = ["DecodedBin", "cache_paths", "decode_blob", "default_workers", "open_decoded_bin"]


@dataclass(frozen=True)
class DecodedBin:
    """One set: ``images`` (2N x H x W x 3 uint8, read-only memory map) and N labels."""

    name: str
    images: np.ndarray
    issame: np.ndarray
    path: Path  # the cache file holding ``images``
    built: bool  # True when this call decoded the set, False when it reused the cache


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def decode_blob(blob: bytes, size: tuple[int, int] | None, source: str) -> np.ndarray:
    """One encoded image -> H x W x 3 uint8 RGB, resized (PIL bilinear, as insightface's
    ``load_bin``) only when ``size`` is given and differs."""
    from PIL import Image

    im = open_image(blob, source)
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(im)


def _size_key(size: tuple[int, int] | None) -> str:
    return "native" if size is None else f"{size[0]}x{size[1]}"


def cache_paths(
    bin_path: str | os.PathLike, cache_dir: str | os.PathLike, digest: str, size=None
) -> tuple[Path, Path]:
    """``(images.npy, issame.npy)`` of a set's entry for this content digest and size."""
    stem = f"{Path(bin_path).stem}-{digest[:16]}-{_size_key(size)}"
    root = Path(cache_dir)
    return root / f"{stem}.npy", root / f"{stem}.issame.npy"


def _open_entry(images_path: Path, issame_path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The entry's arrays, or None when it is missing or not a complete, consistent set."""
    if not (images_path.is_file() and issame_path.is_file()):
        return None
    try:
        issame = np.load(issame_path, allow_pickle=False)
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if (
        issame.dtype != np.bool_
        or issame.ndim != 1
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[0] != 2 * issame.size
        or images.shape[-1] != 3
    ):
        return None
    return images, issame


def _build(
    bin_path: Path,
    images_path: Path,
    issame_path: Path,
    size: tuple[int, int] | None,
    workers: int,
) -> None:
    from synthface.pipeline.formats.verification_bin import read_bin

    blobs, issame = read_bin(bin_path)
    if not blobs:
        raise InputError(f"{bin_path}: verification .bin holds no pairs")
    first = decode_blob(blobs[0], size, f"{bin_path}: image 0")
    # native size: a set whose images differ in size is brought to its first image's size
    shape = (len(blobs), *first.shape)
    hw = first.shape[:2]
    with atomic_path(issame_path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(issame, dtype=bool), allow_pickle=False)
    with atomic_path(images_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        try:

            def decode(i: int) -> np.ndarray:
                return decode_blob(blobs[i], hw, f"{bin_path}: image {i}")

            out[0] = first
            for i, pixels in enumerate(ordered_map(decode, range(1, len(blobs)), workers), 1):
                out[i] = pixels
            out.flush()
        finally:
            del out


def open_decoded_bin(
    bin_path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    size: tuple[int, int] | None = None,
    workers: int | None = None,
    build: bool = True,
) -> DecodedBin:
    """The decoded set of ``bin_path``, decoding it into ``cache_dir`` first if needed.

    ``size``: (H, W) to resize every image to; None keeps the images' own size (the
    first image's, if they differ). ``workers``: decoding threads. ``build=False`` raises
    instead of decoding (for processes that wait for another one to build the entry).
    """
    bin_path = Path(bin_path)
    if not bin_path.is_file():
        raise InputError(f"{bin_path}: no such verification .bin")
    digest, _ = file_sha256(bin_path)
    images_path, issame_path = cache_paths(bin_path, cache_dir, digest, size)
    entry = _open_entry(images_path, issame_path)
    built = False
    if entry is None:
        if not build:
            raise InputError(f"{images_path}: decoded cache of {bin_path} missing or incomplete")
        _build(bin_path, images_path, issame_path, size, workers or default_workers())
        entry = _open_entry(images_path, issame_path)
        if entry is None:  # only if the disk lost what was just written
            raise InputError(f"{images_path}: decoded cache unreadable right after writing it")
        built = True
    images, issame = entry
    return DecodedBin(bin_path.stem, images, issame, images_path, built)
