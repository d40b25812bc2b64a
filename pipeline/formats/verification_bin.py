"""insightface verification ``.bin`` files (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ...).

The format is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N encoded image
byte strings (pairs are consecutive images 2i, 2i+1) and ``issame_list`` N booleans.
The released files were written by Python 2, so they are read with
``encoding="bytes"`` as insightface's ``load_bin`` does.

A pickle can run arbitrary code, and ``.bin`` files are passed around between labs,
so :func:`read_bin` uses an unpickler that resolves no global except a handful of
value constructors, each replaced by a stand-in that only accepts the values a ``.bin``
can hold: numpy bool scalars, numpy arrays of booleans (labels) or bytes (an encoded
image kept as a uint8 buffer, as ``cv2.imencode`` returns it), in numpy 1.x and 2.x
module paths and pickle protocols 0-5, and the ``_codecs.encode`` call Python 3 uses for
bytes in protocol 2. The stand-ins never call numpy's own unpickling code with the
file's values: dtype and array states are checked field by field, sizes against the
bytes, before an array is built with ``np.frombuffer``. Any other global —
``os.system``, ``builtins.eval``, object arrays — is refused before it is looked up,
so nothing runs.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.errors import InputError

__all__ = ["read_bin", "write_bin"]

# insightface writes with the highest protocol of its Python; 4 reads everywhere >= 3.4.
_WRITE_PROTOCOL = 4
_NUMPY_CORE = ("numpy.core", "numpy._core")  # numpy 1.x and 2.x module paths
_DTYPES = {"b1": np.dtype(bool), "u1": np.dtype(np.uint8)}  # labels, encoded images
_MAX_DIMS = 2


class _Refused(Exception):
    """Raised inside the unpickler; turned into one InputError line by read_bin."""


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else value


class _Dtype:
    """Stands in for ``numpy.dtype('b1'|'u1')``; its pickled state must be the plain one."""

    def __init__(self, name, align=False, copy=False):
        name = _text(name)
        if name not in _DTYPES:
            raise _Refused(f"numpy dtype {name!r} (only 'b1' booleans and 'u1' bytes)")
        self.dtype = _DTYPES[name]

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, itemsize, alignment, flags[, meta])
        plain = (
            isinstance(state, tuple)
            and len(state) in (8, 9)
            and state[0] in (3, 4)
            and _text(state[1]) == "|"
            and state[2:5] == (None, None, None)
            and state[5:8] == (-1, -1, 0)
            and state[8:] in ((), (None,))
        )
        if not plain:
            raise _Refused("numpy dtype with a non-plain pickled state")


def _dtype_of(token) -> np.dtype:
    if not isinstance(token, _Dtype):
        raise _Refused(f"numpy value of dtype {type(token).__name__}")
    return token.dtype


def _array(raw, dtype: np.dtype, shape, fortran: bool) -> np.ndarray:
    """An array of ``dtype`` and ``shape`` from exactly as many bytes as it needs."""
    if isinstance(raw, str):  # Python 2 pickles read with a text encoding
        raw = raw.encode("latin1")
    if not isinstance(raw, (bytes, bytearray)):
        raise _Refused("numpy array data that is not bytes")
    if (
        not isinstance(shape, tuple)
        or not 1 <= len(shape) <= _MAX_DIMS
        or not all(isinstance(n, int) and n >= 0 for n in shape)
    ):
        raise _Refused(f"numpy array of shape {shape!r}")
    count = 1
    for n in shape:
        count *= n
    if count * dtype.itemsize != len(raw):
        raise _Refused(f"numpy array of shape {shape} with {len(raw)} data bytes")
    return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape, order="F" if fortran else "C")


class _NdarrayClass:
    """Stands in for ``numpy.ndarray`` as the first argument of ``_reconstruct``."""


class _Array:
    """Stands in for an array rebuilt by ``_reconstruct`` + ``__setstate__`` (protocols 0-4)."""

    array: np.ndarray | None = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            raise _Refused("numpy array with an unexpected pickled state")
        _, shape, dtype, fortran, raw = state
        self.array = _array(raw, _dtype_of(dtype), shape, bool(fortran))


def _safe_reconstruct(cls, shape, typecode):
    if cls is not _NdarrayClass or shape != (0,) or _text(typecode) != "b":
        raise _Refused("numpy _reconstruct of anything but a plain ndarray")
    return _Array()


def _safe_frombuffer(buf, dtype, shape, order):
    """numpy's protocol-5 array pickles: ``_frombuffer(buffer, dtype, shape, order)``."""
    return _array(buf, _dtype_of(dtype), shape, _text(order) == "F")


def _safe_scalar(dtype, data=None):
    """Rebuild a ``numpy.bool_`` from its pickled (dtype, raw byte) form as a plain bool."""
    if _dtype_of(dtype) != np.dtype(bool):
        raise _Refused(f"numpy scalar of dtype {dtype.dtype}")
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


_ALLOWED: dict[tuple[str, str], object] = {
    ("numpy", "dtype"): _Dtype,
    ("numpy", "ndarray"): _NdarrayClass,
    ("_codecs", "encode"): _safe_codecs_encode,
    **{(f"{m}.multiarray", "scalar"): _safe_scalar for m in _NUMPY_CORE},
    **{(f"{m}.multiarray", "_reconstruct"): _safe_reconstruct for m in _NUMPY_CORE},
    **{(f"{m}.numeric", "_frombuffer"): _safe_frombuffer for m in _NUMPY_CORE},
}


class _BinUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"global {module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused("persistent id")


def _value(obj):
    """The array an ``_Array`` stand-in holds, anything else as it is."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise _Refused("numpy array without its data")
        return obj.array
    if isinstance(obj, (_Dtype, _NdarrayClass)):
        raise _Refused("a bare numpy dtype or class")
    return obj


def _image_bytes(obj) -> bytes | None:
    """An encoded image: bytes, or a 1-D (or N x 1) uint8 buffer; else ``None``."""
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    if (
        isinstance(obj, np.ndarray)
        and obj.dtype == np.uint8
        and (obj.ndim == 1 or (obj.ndim == 2 and obj.shape[1] == 1))
    ):
        return obj.tobytes()
    return None


def read_bin(path) -> tuple[list[bytes], np.ndarray]:
    """Read a verification ``.bin``; returns (2N encoded images, N-long bool array).

    Raises :class:`InputError` naming the file for anything that is not a pair (list of
    encoded images, list or 1-D array of bools) with twice as many images as labels.
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

    try:
        if not isinstance(obj, (tuple, list)) or len(obj) != 2:
            raise InputError(
                f"{path}: .bin must hold a pair (images, issame), got {type(obj).__name__}"
            )
        bins, issame = _value(obj[0]), _value(obj[1])
        images = [_image_bytes(_value(b)) for b in bins] if isinstance(bins, list) else [None]
    except _Refused as exc:
        raise InputError(f"{path}: refused to load .bin: pickle references {exc}") from None
    if any(b is None for b in images):
        raise InputError(f"{path}: .bin images must be a list of encoded image bytes")
    if isinstance(issame, np.ndarray) and issame.dtype == np.dtype(bool) and issame.ndim == 1:
        issame = issame.tolist()
    if not isinstance(issame, list) or not all(isinstance(s, bool) for s in issame):
        raise InputError(
            f"{path}: .bin issame must be a list of booleans (or a 1-D numpy bool array)"
        )
    if len(images) != 2 * len(issame):
        raise InputError(
            f"{path}: .bin has {len(images)} images for {len(issame)} pairs (expected {2 * len(issame)})"
        )
    return images, np.asarray(issame, dtype=bool)


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
