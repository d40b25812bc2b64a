"""insightface verification ``.bin`` files (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ...).

The format is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N encoded image
byte strings (pairs are consecutive images 2i, 2i+1) and ``issame_list`` N booleans.
The released files were written by Python 2, so they are read with
``encoding="bytes"`` as insightface's ``load_bin`` does.

A pickle can run arbitrary code, and ``.bin`` files are passed around between labs,
so :func:`read_bin` uses an unpickler that resolves no global except a handful of
value constructors, each wrapped so it only accepts the values a ``.bin`` can hold
(numpy bool scalars, and the ``_codecs.encode`` call Python 3 uses for bytes in
protocol 2). Any other global — ``os.system``, ``builtins.eval``, ``numpy`` array
reconstructors — is refused before it is looked up, so nothing runs.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.errors import InputError

__all__ = ["read_bin", "write_bin"]

# insightface writes with the highest protocol of its Python; 4 reads everywhere >= 3.4.
_WRITE_PROTOCOL = 4
_NUMPY_SCALAR_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


class _Refused(Exception):
    """Raised inside the unpickler; turned into one InputError line by read_bin."""


def _safe_dtype(name, align=False, copy=False):
    """Only the boolean dtype, which is what a pickled ``numpy.bool_`` references."""
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    if name != "b1":
        raise _Refused(f"numpy dtype {name!r} (only 'b1' booleans are allowed)")
    return np.dtype("b1", align=False, copy=True)  # a copy: BUILD then sets its state


def _safe_scalar(dtype, data=None):
    """Rebuild a ``numpy.bool_`` from its pickled (dtype, raw byte) form as a plain bool."""
    if not isinstance(dtype, np.dtype) or dtype != np.dtype("b1"):
        raise _Refused(f"numpy scalar of dtype {dtype!r}")
    if isinstance(data, str):  # Python 2 pickles read with a text encoding
        data = data.encode("latin1")
    if not isinstance(data, bytes) or len(data) != 1 or data[0] not in (0, 1):
        raise _Refused("numpy bool scalar with malformed payload")
    return bool(data[0])


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    """Python 3 protocol-2 pickles store bytes as ``_codecs.encode(text, 'latin1')``."""
    if not isinstance(obj, str) or encoding != "latin1" or errors != "strict":
        raise _Refused("_codecs.encode with unexpected arguments")
    return obj.encode("latin1")


_ALLOWED: dict[tuple[str, str], Callable] = {
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _safe_codecs_encode,
    **{(m, "scalar"): _safe_scalar for m in _NUMPY_SCALAR_MODULES},
}


class _BinUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"global {module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused("persistent id")


def read_bin(path) -> tuple[list[bytes], np.ndarray]:
    """Read a verification ``.bin``; returns (2N encoded images, N-long bool array).

    Raises :class:`InputError` naming the file for anything that is not exactly
    ``(list of bytes, list of bools)`` with twice as many images as labels.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read verification .bin ({exc.strerror or exc})") from None
    try:
        obj = _BinUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as exc:
        raise InputError(f"{path}: refused to load .bin: pickle references {exc}") from None
    except Exception as exc:  # any decoding failure means a bad input file
        raise InputError(
            f"{path}: not a verification .bin pickle ({type(exc).__name__}: {exc})"
        ) from None

    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise InputError(
            f"{path}: .bin must hold a pair (images, issame), got {type(obj).__name__}"
        )
    bins, issame = obj
    if not isinstance(bins, list) or not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise InputError(f"{path}: .bin images must be a list of encoded image bytes")
    if not isinstance(issame, list) or not all(isinstance(s, bool) for s in issame):
        raise InputError(f"{path}: .bin issame must be a list of booleans")
    if len(bins) != 2 * len(issame):
        raise InputError(
            f"{path}: .bin has {len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})"
        )
    return [bytes(b) for b in bins], np.asarray(issame, dtype=bool)


def write_bin(path, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write a verification ``.bin`` that insightface's ``load_bin`` reads; atomic.

    Labels are stored as plain Python bools so the file needs no numpy to load.
    """
    images = [bytes(b) for b in images]
    labels = [bool(s) for s in issame]
    if len(images) != 2 * len(labels):
        raise InputError(
            f"{path}: write_bin got {len(images)} images for {len(labels)} pairs "
            f"(expected {2 * len(labels)})"
        )
    data = pickle.dumps((images, labels), protocol=_WRITE_PROTOCOL)
    atomic_write_bytes(path, data)
