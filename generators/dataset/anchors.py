"""The identity anchors of a dataset: a given ``.npy`` or Tammes packing, and where.

Anchors are fixed once per dataset (``plan/anchors.npy``) by the plan step, so shard
tasks on any worker condition on the same vectors and a resumed run cannot drift.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from synthface.generators.checkpoint import read_generator_provenance
from synthface.generators.dataset.config import GenerateConfig
from synthface.generators.region import REGION_FILE
from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.errors import ConfigError, InputError


def load_anchors(
    path: str | Path, dim: int, count: int | None = None, *, field: str = "identities.anchors"
) -> np.ndarray:
    """Unit embeddings from a ``.npy`` (N x ``dim``), L2-normalised, first ``count`` rows.

    Identity anchors, and the real embeddings that ``generator anchors --within`` packs
    anchors among; ``field`` names the setting in error messages. Never unpickles: an
    object array is refused like any other unreadable file.
    """
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{field}: {path}: cannot read the array ({exc})") from None
    if arr.ndim != 2 or arr.shape[1] != dim or not np.issubdtype(arr.dtype, np.number):
        raise InputError(
            f"{field}: {path}: must be a numeric (N, {dim}) array "
            f"(got shape {arr.shape}, dtype {arr.dtype})"
        )
    if count is not None:
        if arr.shape[0] < count:
            raise InputError(f"{field}: {path}: holds {arr.shape[0]} rows, need {count}")
        arr = arr[:count]
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{field}: {path}: contains NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InputError(f"{field}: {path}: contains an all-zero row")
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def anchors_sha256(anchors: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(anchors, np.float32).tobytes()).hexdigest()


def store_anchors(path: Path, anchors: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, anchors, allow_pickle=False)
    data = buf.getvalue()
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def resolve_anchor_region(cfg: GenerateConfig, ckpt: Path):
    """(packing actually used, the checkpoint's identity region or None, warnings)."""
    from synthface.generators.region import load_identity_region

    ids = cfg.identities
    region = load_identity_region(ckpt)
    if ids.anchors is not None:
        return "given", region, []
    if ids.anchor_region == "sphere":
        return "sphere", region, []
    if region is not None:
        return "data", region, []
    if ids.anchor_region == "data":
        raise ConfigError(
            f"identities.anchor_region: data, but {ckpt} stores no {REGION_FILE} (the region "
            "of its training identities); add it with `synthface generator region` or set "
            "identities.anchor_region: sphere"
        )
    if read_generator_provenance(ckpt) is not None:
        # Imported weights: their training data is not here, so no region can be fitted and
        # a silent whole-sphere fallback would be the only outcome; the user must choose.
        raise ConfigError(
            f"identities.anchors: {ckpt} holds imported weights without {REGION_FILE}: give "
            "identities.anchors (--anchors: your contexts .npy, e.g. UIFace's released "
            "ones) or opt in to whole-sphere anchors with identities.anchor_region: sphere "
            "(--anchor-region sphere)"
        )
    return (
        "sphere",
        None,
        [
            f"{ckpt} stores no {REGION_FILE}: anchors fall back to the whole sphere, where "
            "generators draw new identities much less well (docs/generators.md); add it with "
            "`synthface generator region CHECKPOINT --data TRAINING_SHARDS`"
        ],
    )
