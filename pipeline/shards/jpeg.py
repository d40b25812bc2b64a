"""JPEG decoding for the readers: libjpeg-turbo through ``simplejpeg`` when installed, else PIL.

Training decodes every sample once per epoch, one image at a time in the loader workers,
and PIL's per-image overhead (file object, plugin lookup, ``Image`` wrapper, mode
conversion) costs more than the decode of a 112 px face itself. ``simplejpeg`` calls
libjpeg-turbo straight into a numpy array (docs/benchmarks.md, "JPEG decoding").

The fast path is only taken where it gives PIL's pixels *exactly*: accurate integer IDCT
and fancy upsampling (simplejpeg's ``fastdct``/``fastupsample`` off, libjpeg's defaults,
which PIL uses) on YCbCr and greyscale JPEGs; PIL decodes everything else (CMYK/YCCK,
anything simplejpeg rejects, corrupt data), so error messages stay PIL's. The pixel
limit of :mod:`synthface.pipeline.limits` is applied from the header before decoding.

The decoder is one setting for the whole process tree, like the pixel limit: the
environment variable ``SYNTHFACE_JPEG_DECODER`` = ``auto`` (default: simplejpeg when
importable), ``simplejpeg`` (an error if it is missing) or ``pil``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache

import numpy as np

from synthface.pipeline.errors import ConfigError
from synthface.pipeline.limits import check_pixels, quote
from synthface.pipeline.registry import Registry

DECODER_ENV = "SYNTHFACE_JPEG_DECODER"
JPEG_MAGIC = b"\xff\xd8\xff"
# libjpeg's output conversions that are exactly PIL's: YCbCr -> RGB, and grey replicated
FAST_COLORSPACES = ("YCbCr", "Gray")

# name -> a decoder: (bytes, source) -> HxWx3 uint8, or None to hand the image to PIL
DECODERS: Registry[Callable[[bytes, str], np.ndarray | None]] = Registry("jpeg decoder")


@DECODERS.register("pil")
def _pil(data: bytes, source: str) -> np.ndarray | None:
    return None


@DECODERS.register("simplejpeg")
def _simplejpeg(data: bytes, source: str) -> np.ndarray | None:
    import simplejpeg

    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except Exception:  # hostile bytes: PIL decodes them or says what is wrong, in our words
        return None
    if colorspace not in FAST_COLORSPACES:
        return None
    check_pixels(width, height, source)
    try:
        return simplejpeg.decode_jpeg(
            data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True
        )
    except Exception:
        return None


def _installed() -> bool:
    try:
        import simplejpeg
    except ImportError:
        return False
    return simplejpeg is not None


@cache
def _resolve(setting: str) -> str:
    if setting == "auto":
        return "simplejpeg" if _installed() else "pil"
    if setting not in DECODERS:
        raise ConfigError(
            f"{DECODER_ENV}={quote(setting)}: must be auto or one of {DECODERS.names()}"
        )
    if setting == "simplejpeg" and not _installed():
        raise ConfigError(
            f"{DECODER_ENV}=simplejpeg but simplejpeg is not installed "
            "(pip install simplejpeg, or set it to auto or pil)"
        )
    return setting


def jpeg_decoder() -> str:
    """The decoder in force: ``"simplejpeg"`` or ``"pil"``."""
    return _resolve(os.environ.get(DECODER_ENV, "auto"))


def set_jpeg_decoder(name: str) -> str:
    """Choose the decoder for this process and the processes it starts; returns it resolved."""
    resolved = _resolve(name)
    os.environ[DECODER_ENV] = name
    return resolved


def decode_jpeg(data: bytes, source: str) -> np.ndarray | None:
    """HxWx3 uint8 RGB by the fast path, or ``None`` where PIL must decode ``data``."""
    if not isinstance(data, bytes | bytearray | memoryview) or bytes(data[:3]) != JPEG_MAGIC:
        return None  # paths and non-JPEG bytes: PIL
    return DECODERS.get(jpeg_decoder())(data, source)
