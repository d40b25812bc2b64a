"""InsightFace/MXNet RecordIO (``train.rec`` + ``train.idx`` + ``property``) <-> identity-set shards.

``from_rec``: records need not be sorted by identity: a first pass reads only the ``IRHeader`` of each
image record (a few bytes each) to learn labels, so memory is one small integer per record,
never image data; the second pass copies payloads in identity order, undecoded except for
a validity check. Labels are remapped to contiguous 0..C-1 in ascending label order; the
original label is kept in each sample's ``.json`` (``source_label``).

``to_rec``: the layout arcface_torch's ``MXFaceDataset`` reads. Record 0 is a header
whose label is ``(N + 1, N + 1 + C)``; records ``1..N`` are the images in shard order
(identity-contiguous, so identity ``c``'s images are one key range), each with its
scalar class label and the image bytes as stored in the shard (JPEG or PNG, never
re-encoded); records ``N + 1 .. N + C`` hold each identity's ``(first, end)`` image key
range. ``property`` is ``C,H,W``. One pass over the shards, one sample in memory.
"""

from __future__ import annotations

import contextlib
import io
import struct
from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_write, atomic_write_text
from synthface.pipeline.errors import InputError, ShardError
from synthface.pipeline.formats.recordio import IndexedRecordIO, RecordIOWriter, pack, unpack
from synthface.pipeline.output_paths import check_output_outside
from synthface.pipeline.shards.dataset_writer import DatasetWriter
from synthface.pipeline.shards.manifest import shard_paths, split_manifest
from synthface.pipeline.shards.sample import Sample, decode_image, image_format

# labels are float32 in the record header: integers are exact up to 2^24
MAX_REC_CLASSES = 1 << 24


def resolve_prefix(prefix: str | Path) -> tuple[Path, Path, Path]:
    """``(rec, idx, property)`` for ``DIR`` (-> ``DIR/train``), ``DIR/train`` or ``DIR/train.rec``."""
    p = Path(prefix)
    if p.is_dir():
        p = p / "train"
    if p.suffix in (".rec", ".idx"):
        p = p.with_suffix("")
    rec, idx = p.with_name(p.name + ".rec"), p.with_name(p.name + ".idx")
    for f in (rec, idx):
        if not f.is_file():
            raise InputError(f"{f}: missing (from-rec needs PREFIX.rec and PREFIX.idx)")
    return rec, idx, p.parent / "property"


def read_property(path: Path) -> int | None:
    """Class count from insightface's ``property`` file (``classes,height,width``)."""
    if not path.exists():
        return None
    text = path.read_text(errors="replace").strip()
    try:
        return int(text.split(",")[0])
    except ValueError:
        raise InputError(f"{path}: expected 'CLASSES,HEIGHT,WIDTH' (got {text[:40]!r})") from None


def image_keys(rec: IndexedRecordIO) -> list[int]:
    first = rec.keys[0]
    header = rec.read_header(first)
    if header.flag > 0 and first == 0:
        end = int(header.first_label)
        keys = list(range(1, end))
        missing = [k for k in keys if k not in rec.offsets]
        if missing:
            raise InputError(
                f"{rec.idx_path}: header record 0 announces images 1..{end - 1} but record "
                f"{missing[0]} is not indexed (truncated .idx?)"
            )
        return keys
    return list(rec.keys)


def from_rec(
    prefix: str | Path,
    out: str | Path,
    *,
    max_samples: int = 10000,
    max_bytes: int = 1 << 30,
    split: str = "train",
) -> dict:
    rec_path, idx_path, prop_path = resolve_prefix(prefix)
    classes = read_property(prop_path)
    with IndexedRecordIO(rec_path, idx_path) as rec:
        keys = image_keys(rec)
        if not keys:
            raise InputError(f"{rec_path}: empty source: no image records")
        labels = np.fromiter(
            (int(rec.read_header(k).first_label) for k in keys), dtype=np.int64, count=len(keys)
        )
        if labels.min() < 0 or (classes is not None and labels.max() >= classes):
            bad = int(labels[(labels < 0) | (labels >= (classes or 1 << 62))][0])
            raise InputError(
                f"{rec_path}: label {bad} outside 0..{(classes or 0) - 1} declared by {prop_path}"
            )
        order = np.argsort(labels, kind="stable")
        source_labels, contiguous = np.unique(labels, return_inverse=True)
        config = {
            "converter": "from-rec",
            "source": str(rec_path.resolve()),
            "max_samples": max_samples,
            "max_bytes": max_bytes,
        }
        writer = DatasetWriter(
            out, config=config, split=split, max_samples=max_samples, max_bytes=max_bytes
        )
        with writer:
            index, last = 0, -1
            for pos in order.tolist():
                key, identity = keys[pos], int(contiguous[pos])
                index = index + 1 if identity == last else 0
                last = identity
                where = f"{rec_path} record {key}"
                _, payload = unpack(rec.read_idx(key), where)
                fmt = image_format(payload)
                if fmt is None:
                    raise InputError(f"{where}: payload is not a JPEG or PNG image")
                decode_image(payload, where)
                meta = {"source_record": key, "source_label": int(labels[pos])}
                writer.add(
                    Sample(identity=identity, index=index, image=payload, ext=fmt, meta=meta)
                )
            extra = {"property_classes": classes} if classes is not None else {}
            return writer.close(identity_arrays={"source_labels": source_labels}, extra=extra)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from the first SOF segment, walking the segment lengths."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a length
            pos += 2
            continue
        if marker in _SOF:
            if pos + 9 > n:
                return None
            h, w = struct.unpack_from(">HH", data, pos + 5)
            return h, w
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return None


def _image_size(data: bytes, where: str) -> tuple[int, int]:
    """``(height, width)`` from the image header only (no decode; PIL when unusual)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        w, h = struct.unpack_from(">II", data, 16)
        return h, w
    if data[:2] == b"\xff\xd8":
        found = _jpeg_size(data)
        if found is not None:
            return found
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as pil:
            return pil.height, pil.width
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ShardError(f"{where}: unreadable image header ({exc})") from None


def to_rec(dataset_dir: str | Path, out: str | Path, *, split: str = "train") -> dict:
    """Write ``OUT/train.rec``, ``OUT/train.idx`` and ``OUT/property`` from a shard dataset.

    Streams the shards once (memory: one sample plus one integer per identity). The
    ``.rec`` and ``.idx`` appear only when complete and consistent with the manifest; a
    failure leaves any earlier export in ``OUT`` untouched.

    Raises:
        ShardError: a sample out of identity order, a label that disagrees with the
            manifest's counts, images of different sizes (arcface_torch does not resize).
    """
    from synthface.pipeline.shards.index_reader import iter_raw

    entry = split_manifest(dataset_dir, split)
    n, classes = int(entry["num_samples"]), int(entry["num_identities"])
    if classes >= MAX_REC_CLASSES:
        raise ShardError(
            f"{dataset_dir}: {classes} identities; RecordIO float32 labels are exact only "
            f"below {MAX_REC_CLASSES}"
        )
    out = Path(out)
    check_output_outside(out, "output", dataset=dataset_dir)
    out.mkdir(parents=True, exist_ok=True)
    starts = np.zeros(classes + 1, dtype=np.int64)
    size: tuple[int, int] | None = None
    key, last, nbytes = 1, -1, 0
    with contextlib.ExitStack() as stack:
        # entered idx first so the .rec is renamed into place before its index
        idx_file = stack.enter_context(atomic_write(out / "train.idx", "w", encoding="ascii"))
        rec_file = stack.enter_context(atomic_write(out / "train.rec", "wb", buffering=1 << 20))
        writer = RecordIOWriter(rec_file, idx_file)
        writer.write(0, pack([n + 1, n + 1 + classes]))
        for shard in shard_paths(dataset_dir, split):
            for raw in iter_raw(shard):
                where = f"{shard}: sample {raw['__key__']!r}"
                ext = "jpg" if "jpg" in raw else "png" if "png" in raw else None
                try:
                    label = int(raw["cls"])
                except (KeyError, ValueError):
                    raise ShardError(f"{where}: missing or bad .cls member") from None
                if ext is None:
                    raise ShardError(f"{where}: no .jpg/.png member")
                if label not in (last, last + 1) or label >= classes:
                    raise ShardError(
                        f"{where}: label {label} out of identity order (previous {last}, "
                        f"{classes} identities); run `synthface shards verify`"
                    )
                if key > n:
                    raise ShardError(f"{where}: more samples than the manifest's {n}")
                if label != last:
                    starts[label] = key
                    last = label
                image = raw[ext]
                hw = _image_size(image, where)
                if size is None:
                    size = hw
                elif hw != size:
                    raise ShardError(
                        f"{where}: image is {hw[0]}x{hw[1]}, earlier ones {size[0]}x{size[1]}; "
                        "arcface_torch needs one image size"
                    )
                writer.write(key, pack(float(label), image, id1=key))
                nbytes += len(image)
                key += 1
        if key - 1 != n or last != classes - 1:
            raise ShardError(
                f"{dataset_dir}: shards hold {key - 1} samples of {last + 1} identities, the "
                f"manifest says {n} of {classes}; run `synthface shards verify`"
            )
        starts[classes] = n + 1
        for c in range(classes):
            writer.write(n + 1 + c, pack([int(starts[c]), int(starts[c + 1])]))
    assert size is not None
    atomic_write_text(out / "property", f"{classes},{size[0]},{size[1]}\n")
    return {
        "out": str(out),
        "records": n,
        "identities": classes,
        "image_size": list(size),
        "image_bytes": nbytes,
        "rec_bytes": (out / "train.rec").stat().st_size,
    }
