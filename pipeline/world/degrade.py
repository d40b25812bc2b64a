"""Capture degradations of the procedural world: defocus blur, sensor noise, JPEG.

Applied after the clean ``albedo * shading`` composite, so the maps stay the
conditions of the undegraded face. Blur is a separable Gaussian whose per-image
sigma is applied to the whole batch at once (per-image tap weights); noise uses
one generator per image keyed by its seed so bytes never depend on batching.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from PIL import Image

from synthface.pipeline.limits import open_image

_RADIUS = 3


def _blur(img: np.ndarray, sigma_px: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur of channel-first (3, B, H, W) images, one sigma per image."""
    taps = np.arange(-_RADIUS, _RADIUS + 1, dtype=np.float64)
    s = np.maximum(sigma_px, 1e-3)[:, None]
    w = np.exp(-0.5 * (taps[None, :] / s) ** 2)
    w /= w.sum(1, keepdims=True)
    w = w.astype(np.float32)
    out = img
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (_RADIUS, _RADIUS)
        p = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        n = out.shape[axis]
        for k in range(2 * _RADIUS + 1):
            sl = [slice(None)] * 4
            sl[axis] = slice(k, k + n)
            acc += p[tuple(sl)] * w[None, :, k, None, None]
        out = acc
    return out


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    return np.asarray(open_image(buf.getvalue(), "world JPEG"))


def degrade_batch(
    clean: np.ndarray, style: Mapping[str, np.ndarray], seeds: np.ndarray
) -> np.ndarray:
    """(B, H, W, 3) float 0..1 -> uint8 after blur, noise and JPEG per the style columns."""
    size = clean.shape[1]
    img = np.ascontiguousarray(np.moveaxis(clean, -1, 0))  # channel-first; a view if it was
    sigma = np.asarray(style["blur"], dtype=np.float64) * size / 112.0
    rows = np.flatnonzero(sigma > 0.05)
    if len(rows):
        img = img.copy()
        img[:, rows] = _blur(img[:, rows], sigma[rows])
    noise = np.asarray(style["noise"], dtype=np.float64)
    noisy = np.flatnonzero(noise > 0)
    if len(noisy):
        img = img.copy() if not len(rows) else img
        for i in noisy:
            rng = np.random.default_rng(np.random.SeedSequence(int(seeds[i]), spawn_key=(7,)))
            grain = rng.standard_normal((*img.shape[2:], 3), dtype=np.float32)  # (H, W, 3)
            img[:, i] += np.moveaxis(grain, -1, 0) * np.float32(noise[i])
    out = np.ascontiguousarray(
        np.moveaxis((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), 0, -1)
    )
    quality = np.asarray(style["jpeg"], dtype=np.float64)
    for i in np.flatnonzero(quality > 0):
        out[i] = _jpeg(out[i], int(quality[i]))
    return out
