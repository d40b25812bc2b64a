"""Crash-safe file writes: temporary name, fsync, rename, fsync of the directory.

A reader either sees the previous complete file or the new complete file, never a
prefix — this is what lets "a shard is either complete and listed, or absent" hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_name(final: Path) -> Path:
    # Hidden and suffixed so that globs such as ``shards/*.tar`` never pick it up.
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """tmp + fsync + rename (+ directory fsync): readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


class HashingFile:
    """Write-only file wrapper that hashes and counts bytes as they go out (no re-read)."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self._f.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """``(sha256 hex, size)`` of a file, read in chunks (memory flat in file size)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size
