"""Crash-safe writes, the one helper every writer in synthface uses.

A file is written under a hidden temporary name in its final directory, flushed and
fsynced, renamed over the final name, and the directory is fsynced: a reader (or a
resumed run) sees the previous complete file or the new complete file, never a prefix.
On any error the temporary file is removed. The final file gets the permissions a plain
``open()`` would give (``0o666`` under the user's umask), not ``mkstemp``'s 0600, so a
serving account can read exported models and embeddings.

``atomic_write`` hands out an open file; ``atomic_path`` hands out a temporary *path*
for libraries that insist on writing by name (safetensors, ONNX, ``np.save``);
``atomic_dir`` / ``publish_dir`` do the same for a whole directory (checkpoints), whose
files are fsynced and which replaces an older directory of the same name only once it
is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from synthface.pipeline.errors import InputError


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so that a rename inside it survives a power loss (best effort)."""
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


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def tmp_name(final: Path) -> Path:
    # Hidden and suffixed so that globs such as ``shards/*.tar`` never pick it up; the pid
    # lets a later run tell a dead writer's leftover from a live writer's file.
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def _umask() -> int:
    # os.umask can only be read by setting it; set it back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file under the current umask."""
    return 0o666 & ~_umask()


def _publish(tmp: Path, final: Path, sync: bool = True) -> None:
    os.chmod(tmp, default_mode())
    os.replace(tmp, final)
    if sync:
        fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; publish it there when the block succeeds.

    The caller (or the library it calls) writes the whole file at the yielded path; it is
    then fsynced and renamed over ``path``. On an exception it is removed. ``sync=False``
    skips both fsyncs (still never a partial file under the final name) for writers of
    thousands of small files that flush once at the end (``os.sync()``).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    try:
        yield tmp
        if sync:
            fsync_file(tmp)
        _publish(tmp, final, sync)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "wb", *, sync: bool = True, **open_kwargs: Any
) -> Iterator[IO]:
    """``open(path, mode)`` that publishes the file only if the block completes."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write: mode must start with 'w' (got {mode!r})")
    with atomic_path(path, sync=sync) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        f.flush()


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_file(Path(folder) / name)
        fsync_dir(folder)


def publish_dir(tmp: str | Path, final: str | Path) -> None:
    """Publish a fully written directory ``tmp`` as ``final``.

    Every file in it is fsynced first; an existing ``final`` is moved aside and removed
    only after the new one is in place, so a crash leaves the old or the new directory
    under the final name (plus, at worst, a hidden ``.NAME.old-*`` to delete).
    """
    tmp, final = Path(tmp), Path(final)
    _fsync_tree(tmp)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; publish it there on success.

    Files inside may be written plainly (the directory is the unit of atomicity). On an
    exception the temporary directory is removed and an existing ``path`` is untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a dead process with our pid
    tmp.mkdir()
    try:
        yield tmp
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, sync: bool = True) -> None:
    with atomic_write(path, "wb", sync=sync) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """JSON with sorted keys and a final newline (stable bytes for stable inputs)."""
    text = json.dumps(data, indent=indent, sort_keys=True, ensure_ascii=False)
    atomic_write_text(path, text + "\n")


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


def model_digest(path: str | Path) -> str:
    """sha256 of a model file, or of a checkpoint directory's files (names and contents):
    what a model is, wherever it lies."""
    p = Path(path)
    if p.is_file():
        return file_sha256(p)[0]
    if not p.is_dir():
        raise InputError(f"{p}: no such model file or directory")
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{file_sha256(f)[0]}\n".encode())
    return h.hexdigest()
