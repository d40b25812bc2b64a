"""Image-folder converters: ``SRC/<identity>/<image>`` <-> identity-set shards.

Byte policy: JPEG and PNG files are stored **as they are** (same bytes, so
folder -> shards -> folder is lossless and cheap). Other image formats PIL can read
(BMP, WebP, TIFF, GIF, PPM) are decoded and stored as lossless PNG; their ``.json`` records
``converted_from`` and ``to-folder`` writes them back with a ``.png`` extension. Corrupt
images, non-image files and nested folders are errors that name the file (hidden entries,
names starting with ``.``, are ignored).

With ``align`` (``from-folder --align``), every image is decoded, its face found (a
sidecar landmarks file, or an insightface detector), warped to the 112x112 ArcFace
template and re-encoded (``synthface.pipeline.faces``). Images skipped by the face policy
leave no gap: indices stay contiguous, and an identity left without images is dropped
(labels stay ``0..C-1``, ``names.npy`` lists the kept folders).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.errors import InputError, ShardError
from synthface.pipeline.output_paths import check_output_outside
from synthface.pipeline.shards.dataset_writer import DatasetWriter
from synthface.pipeline.shards.manifest import shard_paths
from synthface.pipeline.shards.sample import (
    Sample,
    decode_image,
    encode_image,
    image_format,
    parse_key,
)

if TYPE_CHECKING:
    from synthface.pipeline.faces.aligner import AlignConfig, Aligner

AS_IS = {".jpg", ".jpeg", ".png"}
CONVERTED = {".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"}


def _name(path: Path) -> str:
    name = path.name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{path}: name is not valid UTF-8; rename it") from None
    return name


def _visible(entries: list[os.DirEntry]) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def list_identities(src: Path, skip_non_images: bool = False) -> list[Path]:
    if not src.is_dir():
        raise InputError(f"{src}: source is not a directory")
    folders = []
    with os.scandir(src) as it:
        for e in _visible(list(it)):
            if e.is_dir():
                folders.append(Path(e.path))
            elif not skip_non_images:
                raise InputError(
                    f"{e.path}: a file at the top of SRC; expected one sub-folder per identity "
                    "(or pass --skip-non-images)"
                )
    if not folders:
        raise InputError(f"{src}: empty source: no identity sub-folders")
    for f in folders:
        _name(f)
    return folders


def _image_files(folder: Path, skip_non_images: bool) -> list[Path]:
    files = []
    with os.scandir(folder) as it:
        for e in _visible(list(it)):
            path = Path(e.path)
            if e.is_dir():
                raise InputError(
                    f"{path}: nested folder inside identity folder; expected image files only"
                )
            suffix = path.suffix.lower()
            if suffix in AS_IS or suffix in CONVERTED:
                _name(path)
                files.append(path)
            elif not skip_non_images:
                raise InputError(
                    f"{path}: not an image file (known: {', '.join(sorted(AS_IS | CONVERTED))}); "
                    "remove it or pass --skip-non-images"
                )
    if not files:
        raise InputError(f"{folder}: identity folder holds no images")
    return files


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: unreadable ({exc.strerror or exc})") from None
    if not data:
        raise InputError(f"{path}: empty file, not an image")
    return data


def _sample(identity: int, index: int, name: str, path: Path) -> Sample:
    data = _read(path)
    meta = {"identity_name": name, "source": f"{name}/{path.name}"}
    fmt = image_format(data)
    if fmt is None and path.suffix.lower() in AS_IS:
        raise InputError(f"{path}: corrupt image (not {path.suffix.lower()[1:].upper()} data)")
    pixels = decode_image(data, str(path))  # raises InputError on corrupt data
    if fmt is None:
        meta["converted_from"] = path.suffix.lower()[1:]
        meta["source"] = f"{name}/{path.stem}.png"
        data, fmt = encode_image(pixels, "png"), "png"
    return Sample(identity=identity, index=index, image=data, ext=fmt, meta=meta)


def _aligned_sample(
    identity: int, index: int, name: str, path: Path, aligner: Aligner
) -> Sample | None:
    data = _read(path)
    pixels = decode_image(data, str(path))
    done = aligner(f"{name}/{path.name}", pixels, str(path))
    if done is None:
        return None
    image, meta = done
    ext = aligner.cfg.image_format
    meta.update(
        identity_name=name, source=f"{name}/{path.stem}.{ext}", original=f"{name}/{path.name}"
    )
    return Sample(identity=identity, index=index, image=image, ext=ext, meta=meta)


def iter_folder_samples(
    src: Path,
    skip_non_images: bool = False,
    aligner: Aligner | None = None,
    kept: list[str] | None = None,
) -> Iterator[Sample]:
    """Samples in label order; with ``aligner``, skipped images and emptied identities
    leave no gaps, and ``kept`` collects the names of the identities that got a label."""
    identity = 0
    for folder in list_identities(src, skip_non_images):
        files = _image_files(folder, skip_non_images)
        if len(files) > 10000:
            raise InputError(f"{folder}: {len(files)} images; at most 10000 per identity")
        index = 0
        for path in files:
            if aligner is None:
                sample = _sample(identity, index, folder.name, path)
            else:
                sample = _aligned_sample(identity, index, folder.name, path, aligner)
            if sample is not None:
                index += 1
                yield sample
        if index:
            if kept is not None:
                kept.append(folder.name)
            identity += 1


def from_folder(
    src: str | Path,
    out: str | Path,
    *,
    max_samples: int = 10000,
    max_bytes: int = 1 << 30,
    skip_non_images: bool = False,
    split: str = "train",
    align: AlignConfig | None = None,
) -> dict:
    """Convert an identity-folder tree to a dataset; labels follow sorted folder names.

    With ``align``, faces are aligned first (see the module doc); the manifest's split
    ``extra.align`` then counts aligned and skipped images and dropped identities.
    """
    src = Path(src)
    check_output_outside(out, "output", source=src)
    names = [f.name for f in list_identities(src, skip_non_images)]
    config = {
        "converter": "from-folder",
        "source": str(src.resolve()),
        "max_samples": max_samples,
        "max_bytes": max_bytes,
        "skip_non_images": skip_non_images,
    }
    aligner = None
    if align is not None:
        from synthface.pipeline.faces.aligner import Aligner

        config["align"] = align.model_dump(mode="json")
        aligner = Aligner(align)
    writer = DatasetWriter(
        out, config=config, split=split, max_samples=max_samples, max_bytes=max_bytes
    )
    kept: list[str] = []
    with writer:
        for sample in iter_folder_samples(src, skip_non_images, aligner, kept):
            writer.add(sample)
        extra = None
        if aligner is not None:
            extra = {"align": {**aligner.summary(), "identities_dropped": len(names) - len(kept)}}
            names = kept
        return writer.close(identity_arrays={"names": np.array(names, dtype=str)}, extra=extra)


def safe_relpath(rel: str, where: str) -> PurePosixPath:
    """A relative path that cannot leave its root (no absolute, no '..', no empty parts)."""
    p = PurePosixPath(rel)
    bad = (
        not rel
        or "\x00" in rel
        or "\\" in rel
        or p.is_absolute()
        or any(part in ("", ".", "..") for part in rel.split("/"))
    )
    if bad:
        raise ShardError(f"{where}: output name {rel!r} would escape OUT; refusing to write it")
    return p


def _target(raw_key: str, meta: dict, ext: str, where: str) -> PurePosixPath:
    source = meta.get("source")
    if isinstance(source, str):
        return safe_relpath(source, where)
    parsed = parse_key(raw_key)
    if parsed is None:
        raise ShardError(
            f"{where}: member name {raw_key!r} is not a sample key; refusing to write it"
        )
    name = meta.get("identity_name", f"{parsed[0]:08d}")
    if not isinstance(name, str):
        name = f"{parsed[0]:08d}"
    if "/" in name or "\\" in name:
        raise ShardError(
            f"{where}: identity name {name!r} contains a path separator; refusing to write it"
        )
    return safe_relpath(f"{name}/{parsed[1]:04d}.{ext}", where)


def to_folder(dataset_dir: str | Path, out: str | Path, *, split: str = "train") -> dict:
    """Write every image to ``OUT/<identity>/<file>``; re-runs skip files already identical."""
    import json

    from synthface.pipeline.shards.index_reader import iter_raw

    out = Path(out)
    check_output_outside(out, "output", dataset=dataset_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    written = skipped = 0
    seen: set[PurePosixPath] = set()
    for shard in shard_paths(dataset_dir, split):
        for raw in iter_raw(shard):
            where = f"{shard}: sample {raw['__key__']!r}"
            ext = "jpg" if "jpg" in raw else "png" if "png" in raw else None
            if ext is None:
                raise ShardError(f"{where}: no .jpg/.png member")
            try:
                meta = json.loads(raw.get("json", b"{}"))
            except ValueError:
                raise ShardError(f"{where}: .json member does not parse") from None
            rel = _target(raw["__key__"], meta if isinstance(meta, dict) else {}, ext, where)
            if rel in seen:
                raise ShardError(f"{where}: two samples map to the same output file {rel}")
            seen.add(rel)
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.parent.resolve().is_relative_to(root):
                raise ShardError(
                    f"{where}: output name {str(rel)!r} would escape OUT (symlink); refusing"
                )
            data = raw[ext]
            if dest.exists():
                if dest.read_bytes() != data:
                    raise ShardError(
                        f"{dest}: exists with different content; refusing to overwrite"
                    )
                skipped += 1
                continue
            atomic_write_bytes(dest, data)
            written += 1
    return {"written": written, "unchanged": skipped, "out": str(out)}
