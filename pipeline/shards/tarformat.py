"""Minimal, fast USTAR writing and reading for shards (the stdlib ``tarfile`` is 2-3x slower).

Writing produces exactly what ``tarfile`` produces for a USTAR member with our fixed
fields (tests compare the bytes), so the files stay ordinary tars for every tool.
Reading understands regular files, directories (skipped), GNU long names and pax
``path``/``size`` records — enough for shards written by synthface, ``tar`` or
webdataset's ``TarWriter``; anything else is a ``ShardError`` naming the member.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from synthface.pipeline.errors import ShardError

BLOCK = 512
RECORD = 20 * BLOCK
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
# Every field but name, size and checksum is fixed: mode 0444, uid/gid 0, mtime 0, type '0',
# empty link name, "ustar\0" + "00", empty owner names and device numbers, empty prefix.
_MIDDLE = b"0000444\0" + b"0000000\0" + b"0000000\0"
_AFTER_SIZE = b"00000000000\0"
_TAIL = b"0" + b"\0" * 100 + b"ustar\x0000" + b"\0" * (64 + 16 + 155 + 12)
_SPACES = sum(b" " * 8)


def ustar_header(name: str, size: int) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ShardError(f"tar member name {name!r} is longer than 100 bytes")
    if size >= 8**11:
        raise ShardError(f"tar member {name!r}: {size} bytes is too large for USTAR")
    head = raw.ljust(100, b"\0") + _MIDDLE + b"%011o\0" % size + _AFTER_SIZE
    chksum = sum(head) + _SPACES + sum(_TAIL)
    return head + b"%06o\0 " % chksum + _TAIL


def member_bytes(name: str, data: bytes) -> bytes:
    return ustar_header(name, len(data)) + data + b"\0" * (-len(data) % BLOCK)


def end_padding(written: int) -> bytes:
    """End-of-archive blocks plus zero fill to a whole 10 KiB record, as ``tarfile`` does."""
    total = written + len(END_OF_ARCHIVE)
    return END_OF_ARCHIVE + b"\0" * (-total % RECORD)


def _field(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _octal(raw: bytes, where: str) -> int:
    text = raw.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise ShardError(f"{where}: bad number field {raw!r} in tar header (corrupt tar)") from None


def _pax(data: bytes) -> dict[str, str]:
    out = {}
    pos = 0
    while pos < len(data):
        length = int(data[pos : data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1 : pos + length - 1].partition(b"=")
        out[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def walk(
    f: BinaryIO, where: str, read: bool = True
) -> Iterator[tuple[str, int, int, bytes | None]]:
    """``(name, data offset, size, data or None)`` of each regular file member.

    With ``read=False`` file data is skipped with seeks (index building). ``ShardError``
    on truncation, bad checksums or member types a shard never holds.
    """
    offset = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = f.read(BLOCK)
        if not header or header == b"\0" * BLOCK:
            return  # end of archive (or a tar without end blocks)
        if len(header) < BLOCK:
            raise ShardError(f"{where}: truncated tar header at byte {offset}")
        stored = _octal(header[148:156], where)
        if stored != sum(header[:148]) + _SPACES + sum(header[156:]):
            raise ShardError(
                f"{where}: bad tar header checksum at byte {offset} (corrupt or truncated tar)"
            )
        size = _octal(header[124:136], where)
        kind = header[156:157]
        name = _field(header[0:100])
        if header[257:262] == b"ustar" and header[345] != 0:
            name = _field(header[345:500]) + "/" + name
        padded = size + (-size % BLOCK)
        regular = kind in (b"0", b"\0", b"7")
        start = offset + BLOCK
        if regular and not read:
            data = None
            f.seek(padded, 1)
        else:
            data = f.read(padded)
            if len(data) < padded:
                raise ShardError(f"{where}: member {name!r} truncated at byte {start + len(data)}")
            data = data[:size]
        offset = start + padded
        if regular:
            if long_name is not None:
                name, long_name = long_name, None
            if "path" in pax:
                name = pax["path"]
            pax = {}
            yield name, start, size, data
        elif kind == b"L":
            long_name = _field(data)
        elif kind == b"x":
            pax = _pax(data)
        elif kind not in (b"g", b"5"):
            raise ShardError(f"{where}: unsupported tar member type {kind!r} for {name!r}")
