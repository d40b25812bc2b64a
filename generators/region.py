"""Where the training identities live in the conditioning encoder's space, kept with the model.

A generator is only asked for identities it can draw when their anchors lie in the
region its training identities occupy (whole-sphere anchors measured an order of
magnitude worse, docs/benchmarks.md). So, like the attribute prior, every trained
generator stores ``identity_region.safetensors`` next to its weights: the mean, top
principal axes and variances of its training identities' mean embeddings (what
:func:`synthface.generators.id3.anchors.anchors_in_region` packs anchors into) and
those per-identity means themselves (float16), which the novelty guard needs to keep
every new identity a minimum distance away from every training identity.

"Near the data" must never mean "a copy of it": :func:`novelty_guard` moves any anchor
whose cosine to a training identity exceeds ``max_cos`` onto that boundary (in the
plane of the anchor and that identity) and repeats until no anchor is too close, or
fails with a message when the region is too crowded for the margin asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.errors import ConfigError, InputError

log = logging.getLogger(__name__)

REGION_FILE = "identity_region.safetensors"
REGION_FORMAT = "synthface-identity-region"
MAX_AXES = 64


@dataclass
class IdentityRegion:
    """Statistics of the training identities' unit mean embeddings (float64 in memory)."""

    mean: np.ndarray  # (D,)
    axes: np.ndarray  # (K, D)
    variances: np.ndarray  # (K,)
    total_variance: float
    centroids: np.ndarray  # (C, D) unit rows, one per training identity
    meta: dict

    @property
    def num_identities(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def stats(self) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.from_numpy(self.mean.astype(np.float64)),
            "axes": torch.from_numpy(self.axes.astype(np.float64)),
            "variances": torch.from_numpy(self.variances.astype(np.float64)),
            "total_variance": torch.tensor(float(self.total_variance), dtype=torch.float64),
        }

    def neighbour_cosines(self) -> np.ndarray:
        """Each training identity's cosine to its nearest other training identity."""
        from synthface.generators.id3.anchors import nearest_neighbour_cosines

        return nearest_neighbour_cosines(
            torch.from_numpy(self.centroids.astype(np.float32))
        ).numpy()


def region_from_centroids(centroids: np.ndarray, meta: dict | None = None) -> IdentityRegion:
    """Build the region from per-identity mean embeddings (any norm; rows >= 3)."""
    from synthface.generators.id3.anchors import region_statistics

    c = np.asarray(centroids, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 3 or not np.isfinite(c).all():
        raise InputError(
            f"identity region: need a finite (identities >= 3, dim) array, got shape {c.shape}"
        )
    stats = region_statistics(c, max_dims=MAX_AXES)
    unit = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return IdentityRegion(
        mean=stats["mean"].numpy(),
        axes=stats["axes"].numpy(),
        variances=stats["variances"].numpy(),
        total_variance=float(stats["total_variance"]),
        centroids=unit,
        meta=dict(meta or {}),
    )


def identity_centroids(
    samples: Iterable[dict],
    embed,
    *,
    max_images_per_identity: int = 16,
    batch_size: int = 256,
    use_cached_embeddings: bool = False,
) -> tuple[np.ndarray, dict]:
    """Per-identity mean of unit embeddings over labelled samples (streamed, one pass).

    ``embed``: uint8 NHWC images -> (N, D) unit embeddings (the conditioning encoder's
    ``embed_uint8``). At most ``max_images_per_identity`` images of each identity are
    embedded; memory is one batch plus one (D,) sum per identity.
    """
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    images: list[np.ndarray] = []
    labels: list[int] = []

    def add(vectors: np.ndarray, labs: list[int]) -> None:
        v = np.asarray(vectors, dtype=np.float64)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        for row, lab in zip(v, labs):
            if lab in sums:
                sums[lab] += row
            else:
                sums[lab] = row.copy()

    def flush() -> None:
        if images:
            shapes = {im.shape for im in images}
            if len(shapes) == 1:
                vecs = embed(np.stack(images))
            else:
                vecs = np.concatenate([embed(im[None]) for im in images])
            add(vecs, labels)
            images.clear()
            labels.clear()

    seen = 0
    for s in samples:
        lab = int(s["label"])
        if counts.get(lab, 0) >= max_images_per_identity:
            continue
        counts[lab] = counts.get(lab, 0) + 1
        seen += 1
        if use_cached_embeddings:
            e = s.get("embedding")
            if e is None:
                raise InputError(f"sample {s.get('__key__')!r}: no cached embedding (.npy)")
            add(np.asarray(e, dtype=np.float32).reshape(1, -1), [lab])
            continue
        images.append(np.asarray(s["image"]))
        labels.append(lab)
        if len(images) >= batch_size:
            flush()
    flush()
    if len(sums) < 3:
        raise InputError(f"identity region: {len(sums)} identities in the data (need >= 3)")
    order = sorted(sums)
    cent = np.stack([sums[k] / counts[k] for k in order])
    return cent, {"num_identities": len(order), "num_images": seen}


def _labelled_samples(cfg, data=None) -> Iterable[dict] | None:
    """The training data in a stable order, each sample once (None: cannot be re-read)."""
    from collections.abc import Sequence

    if isinstance(data, Sequence):
        return data
    if cfg.data.path is None:
        return None
    if cfg.data.source == "folder":
        from synthface.generators.data import ImageFolder

        return ImageFolder(cfg.data.path)
    from synthface.pipeline.shards import iter_samples

    return iter_samples(cfg.data.path)


def encoder_sha256(path: str | Path | None) -> str | None:
    """Hash of a recognizer checkpoint's files (or an .onnx file): which space a region is in."""
    if path is None:
        return None
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.glob("*") if f.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def fit_identity_region(
    cfg, encoder, *, data=None, max_images_per_identity: int = 16
) -> IdentityRegion | None:
    """The region of ``cfg``'s training identities under ``encoder`` (None when impossible)."""
    samples = _labelled_samples(cfg, data)
    if samples is None or (encoder is None and not cfg.data.use_cached_embeddings):
        log.warning(
            "identity region not stored: the training data cannot be re-read or there is no "
            "encoder; generation will fall back to whole-sphere anchors"
        )
        return None
    embed = None if encoder is None else encoder.embed_uint8
    cent, counts = identity_centroids(
        samples,
        embed,
        max_images_per_identity=max_images_per_identity,
        use_cached_embeddings=cfg.data.use_cached_embeddings,
    )
    meta = {
        **counts,
        "max_images_per_identity": max_images_per_identity,
        "encoder": cfg.encoder.path,
        "encoder_sha256": encoder_sha256(cfg.encoder.path),
        "data": cfg.data.path,
        "cached_embeddings": bool(cfg.data.use_cached_embeddings),
    }
    return region_from_centroids(cent, meta)


def save_identity_region(checkpoint_dir: str | Path, region: IdentityRegion) -> Path:
    from safetensors.numpy import save

    from synthface.generators.checkpoint import stable_safetensors

    path = Path(checkpoint_dir) / REGION_FILE
    tensors = {
        "mean": region.mean.astype(np.float32),
        "axes": region.axes.astype(np.float32),
        "variances": region.variances.astype(np.float32),
        "total_variance": np.array([region.total_variance], dtype=np.float32),
        "centroids": region.centroids.astype(np.float16),
    }
    metadata = {"format": REGION_FORMAT, "meta": json.dumps(region.meta, sort_keys=True)}
    atomic_write_bytes(path, stable_safetensors(save(tensors, metadata=metadata)))
    return path


def load_identity_region(checkpoint_dir: str | Path) -> IdentityRegion | None:
    """The checkpoint's region, ``None`` if it has none; never unpickles."""
    path = Path(checkpoint_dir) / REGION_FILE
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path}: not a readable identity region ({exc})") from None
    need = {"mean", "axes", "variances", "total_variance", "centroids"}
    if meta.get("format") != REGION_FORMAT or not need <= set(t):
        raise InputError(f"{path}: not a synthface identity region (fields {sorted(t)})")
    d = t["mean"].shape[0]
    if t["axes"].shape[1:] != (d,) or t["centroids"].shape[1:] != (d,):
        raise InputError(f"{path}: inconsistent shapes { ({k: v.shape for k, v in t.items()}) }")
    cent = t["centroids"].astype(np.float64)
    cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    return IdentityRegion(
        mean=t["mean"].astype(np.float64),
        axes=t["axes"].astype(np.float64),
        variances=t["variances"].astype(np.float64),
        total_variance=float(t["total_variance"][0]),
        centroids=cent,
        meta=json.loads(meta.get("meta", "{}")),
    )


def store_identity_region(checkpoint_dir, cfg, encoder, *, data=None) -> Path | None:
    """End-of-training step: fit the region of the training identities and save it.

    A generator that trained fine is never failed by this step: data the region cannot be
    fitted on (fewer than 3 identities, no cached embeddings) leaves a warning and no file.
    """
    try:
        region = fit_identity_region(cfg, encoder, data=data)
    except InputError as exc:
        log.warning("identity region not stored (%s); generation falls back to whole-sphere", exc)
        return None
    if region is None:
        return None
    return save_identity_region(checkpoint_dir, region)


# --------------------------------------------------------------------------- novelty
def novelty_guard(
    anchors: np.ndarray, centroids: np.ndarray, max_cos: float, *, rounds: int = 50
) -> tuple[np.ndarray, int]:
    """Anchors whose cosine to every training identity is <= ``max_cos``; (anchors, moved).

    An anchor too close to its nearest training identity w is rotated away from w, in
    the plane of the two, to cosine ``max_cos`` exactly (slightly below, for rounding);
    that may bring it nearer another identity, so rounds repeat until none is too close.
    """
    a = np.asarray(anchors, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    c = np.asarray(centroids, dtype=np.float64)
    target = max_cos - 1e-6
    moved: set[int] = set()
    for _ in range(rounds):
        sims = a @ c.T
        nearest = sims.argmax(1)
        worst = sims[np.arange(len(a)), nearest]
        bad = np.flatnonzero(worst > max_cos)
        if bad.size == 0:
            return a.astype(np.float32), len(moved)
        for i in bad:
            w = c[nearest[i]]
            u = a[i] - worst[i] * w
            norm = np.linalg.norm(u)
            if norm < 1e-9:  # the anchor *is* the identity: any orthogonal direction
                u = np.roll(w, 1) - (np.roll(w, 1) @ w) * w
                norm = np.linalg.norm(u)
            u /= norm
            a[i] = target * w + np.sqrt(1 - target * target) * u
            moved.add(int(i))
    sims = (a @ c.T).max(1)
    raise ConfigError(
        f"identities.novelty_max_cos: {max_cos}: after {rounds} rounds {int((sims > max_cos).sum())} "
        "anchors are still closer than that to a training identity (the training region is "
        "too crowded for this margin); raise the margin or use identities.anchor_region: sphere"
    )


def novelty_report(anchors: np.ndarray, region: IdentityRegion, max_cos: float | None) -> dict:
    """How far the anchors are from the training identities, next to how far those are apart."""
    a = np.asarray(anchors, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    nearest = (a @ region.centroids.T).max(1)
    own = region.neighbour_cosines().astype(np.float64)

    def r(x) -> float:
        return round(float(x), 4)

    return {
        "max_cos_to_training": max_cos,
        "training_identities": region.num_identities,
        "anchor_to_nearest_training_cos": {
            "mean": r(nearest.mean()),
            "p95": r(np.percentile(nearest, 95)),
            "max": r(nearest.max()),
        },
        "training_nearest_neighbour_cos": {
            "mean": r(own.mean()),
            "p95": r(np.percentile(own, 95)),
            "max": r(own.max()),
        },
    }
