"""Which recognizer's embedding space a vector lives in, written down next to the vectors.

Two 512-d recognizers (ElasticFace and an insightface model, say) give vectors of the
same shape whose cosines mean nothing across them, so "anchors, a generator's
conditioning and a QC recognizer agree" cannot be checked from shapes. A space is named
by a string:

* ``sha256:<hex>``: the fingerprint of a recognizer's weights
  (:func:`recognizer_fingerprint`; for one weights file it is that file's ``sha256sum``),
  so any copy of the same weights is the same space;
* any other name (``elasticface``) that a user gave, e.g. when importing released
  weights whose encoder they do not have. A name never equals a fingerprint: the
  project cannot tell whether some recognizer file is "elasticface".

An anchors/contexts ``.npy`` declares its space in a sidecar ``<file>.npy.json`` holding
``{"space": "..."}`` (a plain ``.npy`` stays readable by every other tool). A generator
checkpoint records its space in ``config.json`` (``encoder.space``), a dataset in
``plan/embedding_space.json`` and ``dataset.json`` (``extra.embedding_space``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pydantic import Field

from synthface.pipeline.atomic import atomic_write_json, file_sha256
from synthface.pipeline.config import StrictModel, validate_config
from synthface.pipeline.errors import ConfigError, InputError

SIDECAR_SUFFIX = ".json"
SPACE_FILE = "embedding_space.json"
SPACE_PATTERN = r"^(sha256:[0-9a-f]{64}|[A-Za-z0-9][A-Za-z0-9._+-]{0,127})$"
WEIGHT_SUFFIXES = (".safetensors", ".onnx")


def check_space(value: str, field: str) -> str:
    """``value`` if it is a fingerprint or a plain name, else one line naming ``field``."""
    if not isinstance(value, str) or not re.match(SPACE_PATTERN, value):
        raise ConfigError(
            f"{field}: {value!r} is not an embedding space (a name of letters, digits and "
            "._+- such as 'elasticface', or 'sha256:' and 64 hex digits)"
        )
    if value.startswith("sha256") and not value.startswith("sha256:"):
        raise ConfigError(f"{field}: {value!r}: names starting with 'sha256' are fingerprints")
    return value


def is_fingerprint(space: str | None) -> bool:
    return bool(space) and space.startswith("sha256:")


def recognizer_fingerprint(path: str | Path) -> str:
    """``sha256:...`` of a recognizer's weights: an ``.onnx`` file, or a checkpoint directory.

    Only weights count (``*.safetensors``/``*.onnx`` directly in a directory), not its
    ``config.json``, so copies whose run notes differ are still the same space. One file:
    its plain sha256; several: the sha256 of their ``name sha256`` lines.
    """
    p = Path(path)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
    else:
        raise InputError(f"{p}: no such recognizer")
    if not files:
        raise InputError(f"{p}: no weights file (*.safetensors or *.onnx) to fingerprint")
    if len(files) == 1:
        return "sha256:" + file_sha256(files[0])[0]
    lines = "".join(f"{f.name} {file_sha256(f)[0]}\n" for f in files)
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def describe(space: str | None) -> str:
    """Short form for one-line messages (fingerprints cut to 12 hex digits)."""
    if space is None:
        return "unknown"
    return space[:19] + "..." if is_fingerprint(space) else repr(space)


# --------------------------------------------------------------------------- anchors sidecar
class AnchorsSidecar(StrictModel):
    """``<anchors>.npy.json``: the space an anchors/contexts file's rows live in."""

    space: str = Field(pattern=SPACE_PATTERN)
    # Free text: where the vectors came from (shown, never interpreted).
    source: str | None = None


def sidecar_path(anchors: str | Path) -> Path:
    p = Path(anchors)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def read_anchor_space(anchors: str | Path) -> str | None:
    """The space ``anchors`` declares in its sidecar, ``None`` when it has none."""
    side = sidecar_path(anchors)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{side}: unreadable anchors sidecar ({exc})") from None
    return validate_config(data, AnchorsSidecar, str(side)).space


def write_anchor_space(anchors: str | Path, space: str, source: str | None = None) -> Path:
    """Declare the space of ``anchors`` (atomic; rewritten only when it changes)."""
    side = sidecar_path(anchors)
    doc = AnchorsSidecar(space=check_space(space, "space"), source=source).model_dump(
        exclude_none=True
    )
    try:
        if json.loads(side.read_text(encoding="utf-8")) == doc:
            return side
    except (OSError, ValueError):
        pass
    atomic_write_json(side, doc)
    return side


# --------------------------------------------------------------------------- dataset record
def space_record_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / "plan" / SPACE_FILE


def read_space_record(dataset_dir: str | Path) -> dict | None:
    try:
        return json.loads(space_record_path(dataset_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
