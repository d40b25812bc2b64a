"""Cheap completeness checks of the files a resumed run loads, before it loads any.

A resumed training that loads a truncated weights file, or whose library quietly skips an
unreadable RNG state (accelerate only logs "Could not load random states" at INFO), would
continue as a different run without saying so. These checks read headers and checksums,
not tensors, and raise ``InputError`` naming the file:

* ``check_safetensors``: the JSON header parses and the tensors it lists end exactly at
  the end of the file (a truncated or appended file fails);
* ``check_zip``: a ``torch.save`` file (a zip archive) whose members' CRC-32s all match
  (a truncated file has no central directory; a damaged one fails its CRC);
* ``newest_intact``: the resume policy both trainers share (error naming the file, or
  with ``--resume-allow-partial`` fall back to an older checkpoint and say so).
"""

from __future__ import annotations

import json
import logging
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from synthface.pipeline.errors import InputError

_MAX_HEADER = 100 << 20  # safetensors' own limit for the JSON header
T = TypeVar("T")
log = logging.getLogger(__name__)


def check_safetensors(path: str | Path) -> None:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError(f"{size} bytes, shorter than a header")
            (n,) = struct.unpack("<Q", raw)
            if n > min(_MAX_HEADER, size - 8):
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise InputError(f"{path}: missing (incomplete checkpoint)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a complete safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: not a complete safetensors file (header is not a mapping)")
    ends = [
        t["data_offsets"][1]
        for k, t in header.items()
        if k != "__metadata__" and isinstance(t, dict) and len(t.get("data_offsets", ())) == 2
    ]
    data = size - 8 - n
    if max(ends, default=0) != data:
        raise InputError(
            f"{path}: truncated or damaged safetensors file (tensors end at byte "
            f"{max(ends, default=0)} of the data, the file holds {data})"
        )


def check_zip(path: str | Path) -> None:
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except FileNotFoundError:
        raise InputError(f"{path}: missing (incomplete checkpoint)") from None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise InputError(f"{path}: truncated or not a torch.save file ({exc})") from None
    if bad is not None:
        raise InputError(f"{path}: damaged (CRC mismatch in member {bad!r})")


def newest_intact(
    checkpoints: list[tuple[int, Path]],
    check: Callable[[Path], T],
    allow_partial: bool = False,
) -> tuple[Path, T] | None:
    """The newest of ``(step, dir)`` checkpoints that passes ``check``, with its result.

    A failing newest checkpoint is an error (``check``'s, naming the file) unless
    ``allow_partial`` (``--resume-allow-partial``): then it is skipped for an older one,
    or for a fresh start (``None``), with a warning naming what is dropped and which steps
    are trained again.
    """
    dropped: list[tuple[int, str]] = []
    for step, path in sorted(checkpoints, reverse=True):
        try:
            result = check(path)
        except InputError as exc:
            if not allow_partial:
                raise InputError(
                    f"{exc}; pass --resume-allow-partial to resume from an older checkpoint instead"
                ) from None
            dropped.append((step, str(exc)))
            continue
        _warn_dropped(dropped, step)
        return path, result
    _warn_dropped(dropped, 0)
    return None


def _warn_dropped(dropped: list[tuple[int, str]], step: int) -> None:
    for bad, reason in dropped:
        log.warning(
            "synthface: --resume-allow-partial: dropping checkpoint step-%08d (%s); resuming "
            "from %s, steps %d..%d are trained again",
            bad,
            reason,
            f"step-{step:08d}" if step else "scratch",
            step + 1,
            bad,
        )
