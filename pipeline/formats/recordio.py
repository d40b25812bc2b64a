"""Read and write MXNet/InsightFace indexed RecordIO (``train.rec`` + ``train.idx``) without mxnet.

mxnet is frozen at 1.9.1 and no longer installs on current Python/NumPy, so the format is
parsed here with ``struct``. Layout (dmlc-core ``recordio``, little-endian):

* a record part = ``uint32 magic 0xced7230a`` + ``uint32 lrecord`` + data, padded with zeros
  to a multiple of 4 bytes; ``lrecord``'s upper 3 bits are the continuation flag ``cflag``
  and its lower 29 bits the data length;
* ``cflag`` 0 = whole record; a record whose data contains the magic at a 4-byte-aligned
  position is split there: parts with ``cflag`` 1 (first), 2 (middle), 3 (last), and the
  reader re-inserts the magic between parts;
* an image record's data starts with ``IRHeader`` = struct ``IfQQ`` (flag, label, id, id2);
  when ``flag > 0``, ``flag`` float32 labels follow and ``label`` is that vector; the rest
  is the encoded image;
* ``.idx`` is text, one ``key<TAB>byte offset`` line per record.

InsightFace stores a header record 0 whose ``flag > 0`` and whose ``label[0]`` is one past
the last image record: images are records ``1 .. label[0]-1``. The records from
``label[0]`` to ``label[1] - 1`` describe one identity each: their label is the pair
``(first, end)`` of that identity's image records (``end`` exclusive), which is how
InsightFace's MXNet-era iterators sampled identities.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from synthface.pipeline.errors import InputError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)
LENGTH_MASK = (1 << 29) - 1


@dataclass(frozen=True)
class IRHeader:
    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int

    @property
    def first_label(self) -> float:
        return self.label[0] if isinstance(self.label, tuple) else self.label


def unpack(record: bytes, source: str = "<record>") -> tuple[IRHeader, bytes]:
    """Split a record into its ``IRHeader`` and payload."""
    if len(record) < IR_SIZE:
        raise InputError(
            f"{source}: record of {len(record)} bytes is shorter than an IRHeader ({IR_SIZE})"
        )
    flag, label, id1, id2 = struct.unpack_from(IR_FORMAT, record)
    payload = record[IR_SIZE:]
    if flag > 0:
        if len(payload) < 4 * flag:
            raise InputError(
                f"{source}: IRHeader announces {flag} labels but the record is too short"
            )
        labels = struct.unpack_from(f"<{flag}f", payload)
        return IRHeader(flag, tuple(labels), id1, id2), payload[4 * flag :]
    return IRHeader(flag, label, id1, id2), payload


def read_index(idx_path: str | Path) -> list[tuple[int, int]]:
    """``[(key, offset), ...]`` in file order; ``InputError`` naming the bad line."""
    path = Path(idx_path)
    out: list[tuple[int, int]] = []
    try:
        with open(path, encoding="ascii") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or not line.endswith("\n"):
                    raise InputError(
                        f"{path}: line {lineno}: expected 'KEY<TAB>OFFSET' (truncated .idx?)"
                    )
                try:
                    out.append((int(parts[0]), int(parts[1])))
                except ValueError:
                    raise InputError(
                        f"{path}: line {lineno}: KEY and OFFSET must be integers"
                    ) from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such index file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text .idx file") from None
    if not out:
        raise InputError(f"{path}: empty index (no records)")
    return out


class IndexedRecordIO:
    """Random access to the records of ``rec_path`` through the offsets of ``idx_path``."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        entries = read_index(self.idx_path)
        try:
            self._fd = os.open(self.rec_path, os.O_RDONLY)
        except FileNotFoundError:
            raise InputError(f"{self.rec_path}: no such record file") from None
        self.size = os.fstat(self._fd).st_size
        self.offsets: dict[int, int] = {}
        for key, offset in entries:
            if key in self.offsets:
                raise InputError(f"{self.idx_path}: key {key} listed twice")
            if not 0 <= offset < self.size:
                raise InputError(
                    f"{self.idx_path}: record {key} at offset {offset} lies beyond the end of "
                    f"{self.rec_path.name} ({self.size} bytes; truncated .rec?)"
                )
            self.offsets[key] = offset
        self.keys = [key for key, _ in entries]

    def _read_exact(self, offset: int, n: int, key: int) -> bytes:
        data = os.pread(self._fd, n, offset)
        if len(data) != n:
            raise InputError(
                f"{self.rec_path}: record {key} runs past the end of the file at byte {self.size} "
                "(truncated .rec)"
            )
        return data

    def _part(self, offset: int, key: int) -> tuple[int, bytes, int]:
        head = self._read_exact(offset, 8, key)
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise InputError(
                f"{self.rec_path}: record {key} at offset {offset}: bad magic 0x{magic:08x} "
                "(corrupt .rec, or .idx does not belong to it)"
            )
        cflag, length = lrec >> 29, lrec & LENGTH_MASK
        data = self._read_exact(offset + 8, length, key)
        return cflag, data, offset + 8 + ((length + 3) & ~3)

    def read_idx(self, key: int) -> bytes:
        """The whole record ``key`` (parts re-joined)."""
        if key not in self.offsets:
            raise InputError(f"{self.idx_path}: no record {key} in the index (truncated .idx?)")
        cflag, data, nxt = self._part(self.offsets[key], key)
        if cflag == 0:
            return data
        if cflag != 1:
            raise InputError(f"{self.rec_path}: record {key} starts with continuation flag {cflag}")
        parts = [data]
        while True:
            cflag, data, nxt = self._part(nxt, key)
            parts.append(data)
            if cflag == 3:
                return MAGIC_BYTES.join(parts)
            if cflag != 2:
                raise InputError(
                    f"{self.rec_path}: record {key}: broken multi-part record (flag {cflag})"
                )

    def read_header(self, key: int) -> IRHeader:
        """Only the ``IRHeader`` of record ``key``: reads a few bytes, not the image.

        Falls back to reading the whole record when it is split into parts or carries an
        unusually long label vector.
        """
        if key not in self.offsets:
            raise InputError(f"{self.idx_path}: no record {key} in the index (truncated .idx?)")
        offset = self.offsets[key]
        magic, lrec = struct.unpack("<II", self._read_exact(offset, 8, key))
        cflag, length = lrec >> 29, lrec & LENGTH_MASK
        if magic == MAGIC and cflag == 0 and length >= IR_SIZE:
            if offset + 8 + length > self.size:
                raise InputError(
                    f"{self.rec_path}: record {key} runs past the end of the file at byte "
                    f"{self.size} (truncated .rec)"
                )
            head = self._read_exact(offset + 8, min(length, IR_SIZE + 64), key)
            if IR_SIZE + 4 * struct.unpack_from("<I", head)[0] <= len(head):
                return unpack(head, f"{self.rec_path} record {key}")[0]
        return unpack(self.read_idx(key), f"{self.rec_path} record {key}")[0]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> IndexedRecordIO:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pack(label: float | Sequence[float], payload: bytes = b"", id1: int = 0, id2: int = 0) -> bytes:
    """An ``IRHeader`` + ``payload`` record: a scalar label (``flag`` 0) or a label vector
    (``flag`` = its length, the scalar slot 0, the floats after the header), as mxnet's
    ``recordio.pack`` writes them."""
    if isinstance(label, (int, float)):
        return struct.pack(IR_FORMAT, 0, float(label), id1, id2) + payload
    values = [float(v) for v in label]
    if not values:
        raise ValueError("a label vector needs at least one value")
    head = struct.pack(IR_FORMAT, len(values), 0.0, id1, id2)
    return head + struct.pack(f"<{len(values)}f", *values) + payload


def record_parts(data: bytes) -> bytes:
    """The on-disk bytes of one record, split where the magic occurs as dmlc-core does.

    The writer looks for the magic only at 4-byte-aligned offsets of the data; each
    occurrence ends a part (the magic itself is dropped, the reader puts it back). The
    whole record is padded to a multiple of 4 bytes.
    """
    if len(data) > LENGTH_MASK:
        raise ValueError(f"record of {len(data)} bytes exceeds RecordIO's 2^29 - 1 byte limit")
    out = bytearray()
    start = 0
    pos = data.find(MAGIC_BYTES)
    while pos >= 0:
        if pos % 4 == 0:
            flag = 1 if start == 0 else 2
            out += struct.pack("<II", MAGIC, (flag << 29) | (pos - start)) + data[start:pos]
            start = pos + 4
            pos = data.find(MAGIC_BYTES, start)
        else:
            pos = data.find(MAGIC_BYTES, pos + 1)
    tail = data[start:]
    out += struct.pack("<II", MAGIC, ((3 if start else 0) << 29) | len(tail)) + tail
    out += b"\x00" * (-len(data) % 4)
    return bytes(out)


class RecordIOWriter:
    """Append records to an open ``.rec`` stream and their offsets to an open ``.idx`` text
    stream (``key<TAB>offset``), as ``mx.recordio.MXIndexedRecordIO`` in ``"w"`` mode does.

    The caller owns the files (so that it can write them atomically); the writer only
    counts bytes, so it never seeks and works on any binary stream.
    """

    def __init__(self, rec: IO[bytes], idx: IO[str]) -> None:
        self._rec = rec
        self._idx = idx
        self.offset = 0
        self.count = 0

    def write(self, key: int, record: bytes) -> None:
        blob = record_parts(record)
        self._idx.write(f"{int(key)}\t{self.offset}\n")
        self._rec.write(blob)
        self.offset += len(blob)
        self.count += 1
