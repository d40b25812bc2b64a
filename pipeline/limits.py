"""Resource limits every stage applies to untrusted input: image pixels, memory, quoting.

* **Pixels.** Every image the project decodes goes through :func:`open_image`, which
  reads only the header, refuses an image above :func:`max_image_pixels` naming the file
  and its size, and only then decodes. A few-kilobyte PNG can declare 50000 x 50000 pixels
  (a decompression bomb: 7.5 GB once decoded); a merely huge photo is refused the same
  way. The limit is one number for the whole process tree, set with the environment
  variable ``SYNTHFACE_MAX_IMAGE_PIXELS`` (or ``synthface --max-image-pixels N``), so Dask
  workers and DataLoader workers apply the same one.
* **Memory.** :func:`check_memory` refuses a plan whose estimated peak exceeds the
  machine's memory (physical memory, or the cgroup limit when lower) *before* anything
  is allocated, with the estimate in the message; a 10-million-identity plan fails in
  milliseconds instead of after minutes of swapping or an OOM kill.
* **Quoting.** :func:`quote` shortens values quoted in error messages, so a 1 MB string
  in a config never becomes a 1 MB error line.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from synthface.pipeline.errors import ConfigError, InputError

PIXELS_ENV = "SYNTHFACE_MAX_IMAGE_PIXELS"
# 8192 x 8192: far above any face crop or camera photo a face dataset holds, and at most
# 200 MB once decoded to RGB.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
QUOTE_LIMIT = 60


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters (with the full length when cut)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def max_image_pixels() -> int:
    raw = os.environ.get(PIXELS_ENV)
    if raw is None:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{PIXELS_ENV}={quote(raw)}: must be a positive integer")
    return value


def set_max_image_pixels(value: int) -> None:
    """Set the limit for this process and the processes it starts."""
    if value < 1:
        raise ConfigError(f"--max-image-pixels: must be >= 1 (got {value})")
    os.environ[PIXELS_ENV] = str(int(value))


def check_pixels(width: int, height: int, source: str, limit: int | None = None) -> None:
    limit = max_image_pixels() if limit is None else limit
    if width * height > limit:
        raise InputError(
            f"{source}: image is {width}x{height} = {width * height} pixels, above the limit of "
            f"{limit} (a decompression bomb or an oversized image; raise {PIXELS_ENV} if it is "
            "genuine)"
        )


def open_image(data: bytes | str | Path, source: str | None = None, mode: str = "RGB"):
    """Decode an image (bytes or a path) to a PIL image in ``mode``, within the pixel limit.

    ``InputError`` naming ``source`` (default: the path) for oversized, truncated or
    undecodable data; the decoder's own exception types never escape.
    """
    from PIL import Image

    where = source or (str(data) if not isinstance(data, bytes | bytearray) else "<image>")
    # PIL's own bomb check (a warning above 89 MP, an error above 179 MP) runs inside
    # Image.open, before we see the size, with its own message and threshold: ours replaces
    # it, for every decoder of the project, so it is switched off.
    Image.MAX_IMAGE_PIXELS = None
    limit = max_image_pixels()
    fp = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    try:
        with Image.open(fp) as im:
            check_pixels(im.width, im.height, where, limit)
            im.load()
            return im.convert(mode) if im.mode != mode else im.copy()
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{where}: no such image file") from None
    except Exception as exc:  # PIL raises many types on hostile data; all mean "unusable"
        raise InputError(f"{where}: cannot decode image ({type(exc).__name__}: {exc})") from None


def machine_memory_bytes() -> int:
    """Physical memory, or the cgroup (container) limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            total = min(total, int(raw))
    return total


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(estimate: float, what: str, hint: str = "", device: Any = None) -> None:
    """Refuse (``ConfigError``) a plan whose estimated peak memory exceeds the machine's,
    or the GPU's when ``device`` is a CUDA device."""
    have = machine_memory_bytes()
    if device is not None and "cuda" in str(device):
        import torch

        have = torch.cuda.get_device_properties(torch.device(device)).total_memory
        what += " on the GPU"
    if estimate > have:
        raise ConfigError(
            f"{what}: needs about {_gib(estimate)} of memory, this machine has {_gib(have)}"
            + (f"; {hint}" if hint else "")
        )
