"""One training sample of an identity set, its tar key, and deterministic image codecs.

Keys are ``{identity:08d}/{index:04d}``: digits and one slash only, because WebDataset,
wids and Hugging Face ``datasets`` all split a member name at the first dot of its last
path component — a dot in a key would silently corrupt sample grouping.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from synthface.pipeline.errors import InputError, ShardError
from synthface.pipeline.limits import open_image, quote
from synthface.pipeline.shards.jpeg import decode_jpeg

IMAGE_EXTS = ("jpg", "png")
MAX_IDENTITY = 99_999_999
MAX_INDEX = 9_999
KEY_RE = re.compile(r"^(\d{8})/(\d{4})$")


def make_key(identity: int, index: int) -> str:
    if not 0 <= identity <= MAX_IDENTITY:
        raise InputError(f"identity {identity} out of range 0..{MAX_IDENTITY}")
    if not 0 <= index <= MAX_INDEX:
        raise InputError(f"sample index {index} of identity {identity} out of range 0..{MAX_INDEX}")
    return f"{identity:08d}/{index:04d}"


def parse_key(key: str) -> tuple[int, int] | None:
    """``(identity, index)`` of a well-formed key, else ``None``."""
    m = KEY_RE.match(key)
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class Sample:
    """A sample as producers hand it to the writer: the image is already encoded.

    ``identity`` is the contiguous class label (0..C-1) written as ``.cls``; ``meta``
    becomes the ``.json`` member (``identity`` and ``index`` are added to it).
    """

    identity: int
    index: int
    image: bytes
    ext: str = "jpg"
    meta: dict = field(default_factory=dict)
    embedding: np.ndarray | None = None

    @property
    def key(self) -> str:
        return make_key(self.identity, self.index)


def sniff_image_ext(data: bytes) -> str | None:
    """``"jpg"`` or ``"png"`` from an encoded image's magic bytes (``None`` for neither)."""
    if data[:2] == b"\xff\xd8":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


def encode_image(img: np.ndarray, ext: str = "jpg", quality: int = 95) -> bytes:
    """HxWx3 uint8 RGB -> JPEG/PNG bytes with fixed encoder options and no metadata.

    Fixed options (no EXIF, no timestamps, baseline JPEG, 4:2:0, PNG level 6) make the
    bytes a pure function of the pixels, which is what byte-identical re-runs rest on.
    """
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"encode_image needs an HxWx3 uint8 array (got {arr.dtype} {arr.shape})")
    pil = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    buf = io.BytesIO()
    if ext == "jpg":
        if not 1 <= quality <= 100:
            raise InputError(f"JPEG quality must be in 1..100 (got {quality})")
        pil.save(buf, "JPEG", quality=quality, subsampling=2, optimize=False, progressive=False)
    elif ext == "png":
        pil.save(buf, "PNG", compress_level=6, optimize=False)
    else:
        raise InputError(f"image extension must be one of {IMAGE_EXTS} (got {ext!r})")
    return buf.getvalue()


def image_format(data: bytes) -> str | None:
    """``"jpg"``/``"png"`` from the magic bytes, else ``None`` (does not decode)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


def decode_image(data: bytes, source: str = "<image>") -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 RGB; ``InputError`` naming ``source`` if undecodable
    or above the pixel limit (``synthface.pipeline.limits``).

    JPEGs take the libjpeg-turbo fast path when it is installed (same pixels as PIL,
    :mod:`synthface.pipeline.shards.jpeg`); everything else, and the fallback, is PIL.
    """
    fast = decode_jpeg(data, source)
    return fast if fast is not None else np.asarray(open_image(data, source))


def meta_json(sample: Sample) -> bytes:
    """The ``.json`` member: canonical (sorted, compact) so equal metadata gives equal bytes."""
    import json

    meta: dict[str, Any] = dict(sample.meta)
    for name, value in (("identity", sample.identity), ("index", sample.index)):
        if name in meta and meta[name] != value:
            raise InputError(
                f"sample {sample.key}: meta[{name!r}]={meta[name]!r} disagrees ({value})"
            )
        meta[name] = value
    try:
        text = json.dumps(
            meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"sample {sample.key}: meta is not JSON-serialisable ({exc})") from None
    return text.encode("utf-8")


def npy_from_bytes(data: bytes, source: str) -> np.ndarray:
    """A ``.npy`` held in memory, never unpickled; ``ShardError`` naming ``source`` if bad.

    The header is checked against the bytes that follow before anything is allocated, so
    a corrupt shape cannot make the reader allocate terabytes.
    """
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(fp)
        if dtype.hasobject:
            raise ValueError("object arrays are not allowed")
        count = int(np.prod(shape, dtype=object))
        if count * dtype.itemsize != len(data) - fp.tell():
            raise ValueError(
                f"header declares {shape} {dtype}, the data holds {len(data) - fp.tell()} bytes"
            )
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=fp.tell())
        return arr.reshape(shape, order="F" if fortran else "C").copy()  # writable, own memory
    except Exception as exc:  # numpy's header parser raises many types on hostile bytes
        raise ShardError(
            f"{source}: not a readable .npy array ({type(exc).__name__}: {quote(str(exc), 100)})"
        ) from None


def embedding_npy(sample: Sample) -> bytes | None:
    if sample.embedding is None:
        return None
    arr = np.asarray(sample.embedding)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.floating):
        raise InputError(
            f"sample {sample.key}: embedding must be a 1-D float vector (got {arr.dtype} {arr.shape})"
        )
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()
