"""A plain WebDataset (tars written by ``webdataset.TarWriter``/``ShardWriter``, or ``tar``)
-> identity-set shards: ``synthface shards from-wds``.

Published WebDataset face sets carry a ``.cls`` label and one image per sample but no
manifest, their keys are anything (``sample000001``, ``00000012/0003``, ``id/img``) and a
``ShardWriter`` cuts shards by count, so one identity may span shards and samples need not
be grouped by label. The random-access reader, ``verify``/``inspect`` and the recognizer
trainer rely on what the manifest and identity-contiguous shards guarantee, so the set is
converted once instead of teaching every reader a second layout.

Two passes, as ``from-rec``: the first walks tar headers (data skipped) and reads only the
``.cls`` members, so memory is a few integers and the key per sample; the second copies each image's
bytes undecoded (after a decode check) in label order. Labels are remapped to 0..C-1 in
ascending order (``source_labels.npy``; ``.json`` keeps ``source_label``, ``source_key``,
``source_shard`` and the sample's own ``.json`` object as ``source_meta``). A 1-D float
``.npy`` becomes the embedding; other members (``.txt`` captions, ...) are not copied and
are counted in the split's ``extra.dropped_members``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.pipeline.limits import quote
from synthface.pipeline.output_paths import check_output_outside
from synthface.pipeline.shards.dataset_writer import DatasetWriter
from synthface.pipeline.shards.sample import Sample, decode_image, image_format, npy_from_bytes
from synthface.pipeline.shards.tarformat import walk

IMAGE_MEMBERS = ("jpg", "jpeg", "png")


def source_shards(src: str | Path) -> list[Path]:
    """``SRC`` as a folder (its ``*.tar``, else ``shards/*.tar``), one tar, or brace URLs."""
    p = Path(src)
    if p.is_dir():
        tars = sorted(p.glob("*.tar")) or sorted((p / "shards").glob("*.tar"))
        if not tars:
            raise InputError(f"{p}: no .tar shards in the folder (nor in {p / 'shards'})")
        return tars
    if p.is_file():
        return [p]
    from webdataset.shardlists import expand_urls

    urls = [Path(u) for u in expand_urls(str(src))]
    missing = [u for u in urls if not u.is_file()]
    if missing:
        raise InputError(f"{missing[0]}: no such shard")
    return urls


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key ends at the first dot of the last path component."""
    head, _, last = name.rpartition("/")
    stem, _, ext = last.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def _index(path: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    with open(path, "rb") as f:
        for name, offset, size, _ in walk(f, str(path), read=False):
            key, ext = _split_member(name)
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            members = samples[-1][1]
            if ext in members:
                raise InputError(f"{path}: sample {quote(key)}: two .{ext} members")
            members[ext] = (offset, size)
    return samples


# per-sample columns of the pass-1 index: shard, image, .json and .npy spans (-1: absent)
_SHARD, _IMG, _IMG_SIZE, _JSON, _JSON_SIZE, _NPY, _NPY_SIZE, _EXT = range(8)
MAX_OPEN_SHARDS = 64


class _Shards:
    """``pread`` on the source shards through a bounded set of open descriptors: the
    second pass jumps between shards in label order, and a set may have thousands."""

    def __init__(self, paths: list[Path]):
        self.paths, self.fds = paths, {}

    def read(self, sid: int, offset: int, size: int) -> bytes:
        fd = self.fds.pop(sid, None)
        if fd is None:
            if len(self.fds) >= MAX_OPEN_SHARDS:
                os.close(self.fds.pop(next(iter(self.fds))))  # the least recently used
            fd = os.open(self.paths[sid], os.O_RDONLY)
        self.fds[sid] = fd
        return os.pread(fd, size, offset)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


def _scan(shards: _Shards, dropped: Counter) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Pass 1: ``(labels, columns, keys)``; reads tar headers and ``.cls`` members only."""
    labels: list[int] = []
    rows: list[tuple[int, ...]] = []
    keys: list[str] = []
    for sid, path in enumerate(shards.paths):
        for key, members in _index(path):
            where = f"{path}: sample {quote(key)}"
            images = [e for e in IMAGE_MEMBERS if e in members]
            if "cls" not in members:
                raise InputError(
                    f"{where}: no .cls label member (has .{', .'.join(members)}); "
                    "from-wds takes each sample's class from .cls (an ASCII integer)"
                )
            if len(images) != 1:
                raise InputError(f"{where}: needs exactly one .jpg/.jpeg/.png (has {images})")
            text = shards.read(sid, *members["cls"]).strip()
            if not text.isdigit():
                raise InputError(f"{where}: .cls is not a non-negative integer ({quote(text)})")
            json_span, npy_span = members.get("json", (-1, 0)), members.get("npy", (-1, 0))
            ext = IMAGE_MEMBERS.index(images[0])
            rows.append((sid, *members[images[0]], *json_span, *npy_span, ext))
            labels.append(int(text))
            keys.append(key)
            for other in set(members) - {"cls", "json", "npy", images[0]}:
                dropped[other] += 1
    return np.asarray(labels, np.int64), np.asarray(rows, np.int64).reshape(-1, 8), keys


def from_webdataset(
    src: str | Path,
    out: str | Path,
    *,
    max_samples: int = 10000,
    max_bytes: int = 1 << 30,
    split: str = "train",
) -> dict:
    paths = source_shards(src)
    if Path(src).is_dir():
        check_output_outside(out, "output", source=src)
    shards = _Shards(paths)
    dropped: Counter = Counter()
    try:
        labels, rows, keys = _scan(shards, dropped)
        if not keys:
            raise InputError(f"{src}: empty source: no samples in {len(paths)} shard(s)")
        order = np.argsort(labels, kind="stable")
        source_labels, contiguous = np.unique(labels, return_inverse=True)
        config = {
            "converter": "from-wds",
            "source": [str(p.resolve()) for p in paths],
            "max_samples": max_samples,
            "max_bytes": max_bytes,
        }
        writer = DatasetWriter(
            out, config=config, split=split, max_samples=max_samples, max_bytes=max_bytes
        )
        with writer:
            index, last = 0, -1
            for pos in order.tolist():
                row, key = rows[pos].tolist(), keys[pos]
                identity = int(contiguous[pos])
                index = index + 1 if identity == last else 0
                last = identity
                sid = row[_SHARD]
                where = f"{paths[sid]}: sample {quote(key)}"
                image = shards.read(sid, row[_IMG], row[_IMG_SIZE])
                fmt = image_format(image)
                if fmt is None:
                    ext = IMAGE_MEMBERS[row[_EXT]]
                    raise InputError(f"{where}: .{ext} is not a JPEG or PNG image")
                decode_image(image, where)
                meta: dict = {
                    "source_key": key,
                    "source_label": int(labels[pos]),
                    "source_shard": paths[sid].name,
                }
                if row[_JSON] >= 0:
                    try:
                        meta["source_meta"] = json.loads(
                            shards.read(sid, row[_JSON], row[_JSON_SIZE])
                        )
                    except (ValueError, RecursionError) as exc:
                        raise InputError(f"{where}: .json does not parse ({exc})") from None
                embedding = None
                if row[_NPY] >= 0:
                    data = shards.read(sid, row[_NPY], row[_NPY_SIZE])
                    arr = npy_from_bytes(data, f"{where}: .npy")
                    if arr.ndim == 1 and np.issubdtype(arr.dtype, np.floating):
                        embedding = arr
                    else:
                        dropped["npy"] += 1
                writer.add(Sample(identity, index, image, ext=fmt, meta=meta, embedding=embedding))
            return writer.close(
                identity_arrays={"source_labels": source_labels},
                extra={"dropped_members": dict(sorted(dropped.items()))},
            )
    finally:
        shards.close()
