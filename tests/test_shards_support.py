"""Shared builders for the shard tests (tiny images, folders, datasets, RecordIO files).

The RecordIO writer here is written from the documented dmlc/MXNet record layout, not
from the reader in ``synthface.pipeline.formats.recordio``, so the reader is checked against an
independent implementation.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from synthface.pipeline.shards import (
    Sample,
    encode_image,
    finalize_dataset,
    plan_shards,
    write_shard,
)


def tiny_image(seed: int, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def jpeg_file_bytes(seed: int) -> bytes:
    """A JPEG as a camera/other tool would write it (PIL defaults differ from ours)."""
    buf = io.BytesIO()
    Image.fromarray(tiny_image(seed)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def make_samples(
    first: int, last: int, per_identity: int = 3, ext: str = "jpg", embed: bool = True
):
    for identity in range(first, last + 1):
        for index in range(per_identity):
            seed = identity * 100 + index
            yield Sample(
                identity=identity,
                index=index,
                image=encode_image(tiny_image(seed), ext),
                ext=ext,
                meta={"seed": seed, "generator": "test"},
                embedding=np.full(4, seed, np.float32) if embed else None,
            )


def make_dataset(
    out: Path,
    identities: int = 8,
    per_identity: int = 3,
    max_samples: int = 6,
    config: dict | None = None,
) -> dict:
    """A finished dataset written the way generator producers write one (plan + write_shard)."""
    for plan in plan_shards([per_identity] * identities, max_samples=max_samples):
        write_shard(
            out, plan.index, make_samples(plan.first_identity, plan.last_identity, per_identity)
        )
    return finalize_dataset(
        out,
        config=config or {"test": True, "identities": identities},
        identity_arrays={
            "identities": np.arange(identities * 2, dtype=np.float32).reshape(identities, 2)
        },
    )


def make_folder(root: Path, names=("alice", "bob", "carol"), per_identity: int = 3) -> Path:
    for i, name in enumerate(names):
        d = root / name
        d.mkdir(parents=True)
        for j in range(per_identity):
            if j % 2 == 0:
                (d / f"img{j}.jpg").write_bytes(jpeg_file_bytes(i * 10 + j))
            else:
                (d / f"img{j}.png").write_bytes(encode_image(tiny_image(i * 10 + j), "png"))
    return root


# --- RecordIO writer (dmlc recordio layout) --------------------------------------------

REC_MAGIC = 0xCED7230A


def _record_parts(data: bytes) -> bytes:
    """Encode one record; split at 4-byte-aligned occurrences of the magic, as dmlc does."""
    magic = struct.pack("<I", REC_MAGIC)
    out = bytearray()
    start = 0
    for i in range(0, len(data) - len(data) % 4, 4):
        if data[i : i + 4] == magic:
            flag = 1 if start == 0 else 2
            out += magic + struct.pack("<I", (flag << 29) | (i - start)) + data[start:i]
            start = i + 4
    flag = 3 if start else 0
    tail = data[start:]
    out += magic + struct.pack("<I", (flag << 29) | len(tail)) + tail
    out += b"\x00" * (-len(data) % 4)
    return bytes(out)


def ir_record(label, payload: bytes, id1: int = 0) -> bytes:
    if isinstance(label, (list, tuple)):
        head = struct.pack("<IfQQ", len(label), 0.0, id1, 0) + struct.pack(
            f"<{len(label)}f", *label
        )
    else:
        head = struct.pack("<IfQQ", 0, float(label), id1, 0)
    return head + payload


def write_rec(
    prefix: Path, records: list[tuple[int, bytes]], classes: int | None = None, header0: bool = True
):
    """``records`` = [(label, image bytes)]; writes PREFIX.rec/.idx (+ property)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    entries = []
    if header0:
        entries.append((0, ir_record([float(len(records) + 1), float(len(records) + 1)], b"")))
    for k, (label, payload) in enumerate(records, start=1 if header0 else 0):
        entries.append((k, ir_record(float(label), payload, k)))
    rec = bytearray()
    idx_lines = []
    for key, data in entries:
        idx_lines.append(f"{key}\t{len(rec)}\n")
        rec += _record_parts(data)
    prefix.with_name(prefix.name + ".rec").write_bytes(bytes(rec))
    prefix.with_name(prefix.name + ".idx").write_text("".join(idx_lines))
    if classes is not None:
        (prefix.parent / "property").write_text(f"{classes},16,16\n")
