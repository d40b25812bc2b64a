"""InsightFace/MXNet RecordIO -> identity-set shards (``train.rec`` + ``train.idx`` + ``property``).

Records need not be sorted by identity: a first pass reads only the ``IRHeader`` of each
image record (a few bytes each) to learn labels, so memory is one small integer per record,
never image data; the second pass copies payloads in identity order, undecoded except for
a validity check. Labels are remapped to contiguous 0..C-1 in ascending label order; the
original label is kept in each sample's ``.json`` (``source_label``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.pipeline.formats.recordio import IndexedRecordIO, unpack
from synthface.pipeline.shards.dataset_writer import DatasetWriter
from synthface.pipeline.shards.sample import Sample, decode_image, image_format


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
