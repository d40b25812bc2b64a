"""Minimal, fast USTAR writing and reading for shards (the stdlib ``tarfile`` is 2-3x slower).

Writing produces exactly what ``tarfile`` produces for a USTAR member with our fixed
fields (tests compare the bytes), so the files stay ordinary tars for every tool.
Reading understands regular files, directories (skipped), GNU long names and pax
``path``/``size`` records — enough for shards written by synthface, ``tar`` or
webdataset's ``TarWriter``; anything else is a ``ShardError`` naming the member.
Reading is hardened against hostile bytes: every length is validated before use (against
the file size and per-member limits), so no input makes a reader loop forever or
allocate more than a member's worth of memory (``tests/test_tar_fuzz.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from synthface.pipeline.errors import ShardError
from synthface.pipeline.limits import quote

BLOCK = 512
RECORD = 20 * BLOCK
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
# Read limits: a corrupt size field must not make a reader allocate gigabytes.
MAX_MEMBER_BYTES = 1 << 30  # an image, label, metadata or embedding member
MAX_META_BYTES = 1 << 20  # a pax header or GNU long name
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


def _octal(raw: bytes, where: str, offset: int) -> int:
    text = raw.split(b"\0", 1)[0].strip()
    if text and not all(48 <= c <= 55 for c in text):  # '0'..'7' only: no sign, no '_'
        raise ShardError(
            f"{where}: bad number field {quote(raw)} in the tar header at byte {offset} "
            "(corrupt tar)"
        )
    return int(text or b"0", 8)


def _pax(data: bytes, where: str, offset: int) -> dict[str, str]:
    """``LEN key=value\n`` records; every length is checked, so the loop always advances."""
    out = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        length = int(digits) if digits.isdigit() else -1
        if length < len(digits) + 3 or pos + length > len(data):
            raise ShardError(
                f"{where}: malformed pax record at byte {offset + pos} "
                f"(length {quote(digits or data[pos : pos + 20])}; corrupt tar)"
            )
        record = data[space + 1 : pos + length]
        key, eq, value = record[:-1].partition(b"=")
        if not eq or not record.endswith(b"\n"):
            raise ShardError(f"{where}: malformed pax record at byte {offset + pos} (corrupt tar)")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _bytes_left(f: BinaryIO) -> int | None:
    """Bytes from the current position to the end, ``None`` for a stream (a pipe)."""
    try:
        if not f.seekable():
            return None
        here = f.tell()
        end = f.seek(0, 2)
        f.seek(here)
        return end - here
    except (OSError, AttributeError, ValueError):
        return None


def walk(
    f: BinaryIO, where: str, read: bool = True
) -> Iterator[tuple[str, int, int, bytes | None]]:
    """``(name, data offset, size, data or None)`` of each regular file member.

    With ``read=False`` file data is skipped with seeks (index building). ``ShardError``
    naming ``where`` and the byte offset on truncation, bad checksums, malformed numbers
    or pax records, members larger than the file, or member types a shard never holds.
    Every iteration consumes at least one header block, so any byte sequence ends.
    """
    offset = 0
    total = _bytes_left(f)
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = f.read(BLOCK)
        if not header or header == b"\0" * BLOCK:
            return  # end of archive (or a tar without end blocks)
        if len(header) < BLOCK:
            raise ShardError(f"{where}: truncated tar header at byte {offset}")
        stored = _octal(header[148:156], where, offset)
        if stored != sum(header[:148]) + _SPACES + sum(header[156:]):
            raise ShardError(
                f"{where}: bad tar header checksum at byte {offset} (corrupt or truncated tar)"
            )
        size = _octal(header[124:136], where, offset)
        kind = header[156:157]
        name = _field(header[0:100])
        if header[257:262] == b"ustar" and header[345] != 0:
            name = _field(header[345:500]) + "/" + name
        regular = kind in (b"0", b"\0", b"7")
        if regular and "size" in pax:  # pax overrides the header (members >= 8 GiB)
            if not pax["size"].isdigit():
                raise ShardError(
                    f"{where}: bad pax size {quote(pax['size'])} before byte {offset} (corrupt tar)"
                )
            size = int(pax["size"])
        start = offset + BLOCK
        padded = size + (-size % BLOCK)
        limit = MAX_MEMBER_BYTES if regular else MAX_META_BYTES
        if size > limit:
            raise ShardError(
                f"{where}: member {quote(name)} at byte {offset} declares {size} bytes, more than "
                f"the {limit} a shard member may hold (corrupt tar)"
            )
        if total is not None and start + size > total:
            raise ShardError(
                f"{where}: member {quote(name)} truncated: {size} bytes declared at byte {start}, "
                f"the file ends at byte {total}"
            )
        if regular and not read:
            data = None
            f.seek(padded, 1)
        else:
            data = f.read(padded)
            if len(data) < size:
                raise ShardError(
                    f"{where}: member {quote(name)} truncated at byte {start + len(data)}"
                )
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
            pax = _pax(data, where, start)
        elif kind not in (b"g", b"5"):
            raise ShardError(
                f"{where}: unsupported tar member type {quote(kind)} for {quote(name)} "
                f"at byte {start - BLOCK}"
            )
