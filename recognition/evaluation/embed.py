"""Run an :class:`synthface.recognition.embedder.Embedder` over evaluation images (``.bin`` sets, IJB crops).

The protocol needs *raw* (un-normalised) features: the flip-sum adds raw vectors before
normalising, insightface prints their mean norm ("XNorm"), and IJB's norm-score mode
uses the norm as a quality weight. Embedders expose that as ``embed_raw``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.pipeline.limits import open_image
from synthface.pipeline.progress import progress_bar
from synthface.recognition.evaluation.verification import VerificationResult, evaluate_embeddings

__all__ = ["decode_images", "embed_bin", "evaluate_bin", "raw_features", "raw_features_batches"]


def _raw_fn(embedder):
    fn = getattr(embedder, "embed_raw", None)
    if fn is None:
        raise InputError(
            f"{type(embedder).__name__} gives no raw features (needs embed_raw(images))"
        )
    return fn


def raw_features(
    embedder,
    images: np.ndarray,
    *,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw features of ``images`` and of their horizontal mirrors: (N x D, N x D) float32.

    ``progress(n)`` is called after each batch of ``n`` images.
    """
    fn = _raw_fn(embedder)
    images = np.asarray(images)
    n = images.shape[0]
    orig = flip = None
    for lo in range(0, n, batch_size):
        batch = np.ascontiguousarray(images[lo : lo + batch_size])
        a = np.asarray(fn(batch), dtype=np.float32)
        b = np.asarray(fn(np.ascontiguousarray(batch[:, :, ::-1])), dtype=np.float32)
        if orig is None:
            orig = np.empty((n, a.shape[1]), np.float32)
            flip = np.empty((n, a.shape[1]), np.float32)
        orig[lo : lo + len(batch)] = a
        flip[lo : lo + len(batch)] = b
        if progress is not None:
            progress(len(batch))
    if orig is None:
        raise InputError("no images to embed")
    return orig, flip


def raw_features_batches(
    embedder, batches: Iterable[np.ndarray], *, total: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`raw_features` over a stream of image batches (aligned IJB crops)."""
    parts_o, parts_f = [], []
    with progress_bar(total, desc="embedding faces") as bar:
        for batch in batches:
            o, f = raw_features(embedder, batch, batch_size=len(batch), progress=bar.update)
            parts_o.append(o)
            parts_f.append(f)
    if not parts_o:
        raise InputError("no images to embed")
    return np.concatenate(parts_o), np.concatenate(parts_f)


def decode_images(blobs: list[bytes], size: tuple[int, int], *, source: str = "") -> np.ndarray:
    """Encoded images -> N x H x W x 3 uint8 RGB, resized to ``size`` when they differ.

    insightface's ``load_bin`` resizes the short side when the width differs; the
    standard sets are already 112x112 so this only matters for other sizes.
    """
    from PIL import Image

    h, w = size
    out = np.empty((len(blobs), h, w, 3), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        im = open_image(blob, f"{source}: image {i}")
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        out[i] = np.asarray(im)
    return out


def embed_bin(
    path, embedder, *, batch_size: int = 64, chunk_images: int = 2048
) -> tuple[np.ndarray, np.ndarray, float]:
    """Flip-summed raw features (2N x D float64), issame (N), XNorm of a verification ``.bin``.

    Images are decoded ``chunk_images`` at a time so memory holds only the encoded
    file plus the features, not every decoded image.
    """
    from synthface.pipeline.formats.verification_bin import read_bin

    path = Path(path)
    blobs, issame = read_bin(path)
    size = tuple(embedder.input_size)
    orig_parts, flip_parts = [], []
    with progress_bar(len(blobs), desc=f"evaluating {path.name}") as bar:
        for lo in range(0, len(blobs), chunk_images):
            imgs = decode_images(blobs[lo : lo + chunk_images], size, source=str(path))
            o, f = raw_features(embedder, imgs, batch_size=batch_size, progress=bar.update)
            orig_parts.append(o)
            flip_parts.append(f)
    orig = np.concatenate(orig_parts)
    flip = np.concatenate(flip_parts)
    # insightface: mean L2 norm over the raw features of both views
    xnorm = float(np.r_[np.linalg.norm(orig, axis=1), np.linalg.norm(flip, axis=1)].mean())
    return orig.astype(np.float64) + flip.astype(np.float64), issame, xnorm


def evaluate_bin(
    path,
    embedder,
    *,
    name: str | None = None,
    metric: str = "euclidean_sq",
    nfolds: int = 10,
    batch_size: int = 64,
) -> VerificationResult:
    """insightface "Accuracy-Flip" on a verification ``.bin`` with any Embedder."""
    feats, issame, xnorm = embed_bin(path, embedder, batch_size=batch_size)
    return evaluate_embeddings(
        feats, issame, metric=metric, name=name or Path(path).stem, nfolds=nfolds, xnorm=xnorm
    )
