"""The facial region of interest of DuetFace: the convex hull of the face's landmarks.

The reference runs a PFLD detector (98 points, jaw contour included) on every image. No
landmark detector ships with this project, and aligned crops put the landmarks where the
alignment put them, so the region comes from the 5 alignment landmarks of the training
data: the procedural world records them per image (their mean over the training shards is
used), real data aligned by ``shards from-folder --align`` has them at insightface's
``arcface_dst`` template. The hull of 5 points (eyes, nose, mouth corners) is smaller than a
98-point face contour, so it is enlarged about its centroid by ``scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthface.pipeline.errors import InputError

# insightface arcface_dst (112 x 112 template), as fractions of the side
ARCFACE_LANDMARKS = (
    (38.2946 / 112, 51.6963 / 112),
    (73.5318 / 112, 51.5014 / 112),
    (56.0252 / 112, 71.7366 / 112),
    (41.5493 / 112, 92.3655 / 112),
    (70.7299 / 112, 92.2041 / 112),
)


def _hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull (Andrew's monotone chain) of 2-D points."""
    pts = sorted({(float(x), float(y)) for x, y in points})
    if len(pts) < 3:
        raise InputError(f"region of interest: need 3 distinct landmarks, got {len(pts)}")

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def roi_mask(landmarks: Sequence[Sequence[float]], size: int, scale: float = 1.5) -> np.ndarray:
    """``size x size`` float32 mask, 1 inside the enlarged hull of ``landmarks`` (fractions).

    Pixel centres are at ``(i + 0.5) / size``.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InputError(f"region of interest: landmarks must be K x 2, got shape {pts.shape}")
    centre = pts.mean(axis=0)
    hull = _hull(centre + (pts - centre) * scale)
    c = (np.arange(size) + 0.5) / size
    px, py = np.meshgrid(c, c)  # x along columns, y along rows
    inside = np.ones((size, size), dtype=bool)
    for a, b in zip(hull, np.roll(hull, -1, axis=0)):
        # counter-clockwise in (x, y) with y down: inside is where the cross product >= 0
        inside &= (b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0]) >= 0
    return inside.astype(np.float32)


def mean_landmarks(dataset_dir: str | Path, *, split: str = "train", limit: int = 2000):
    """Mean 5-point landmarks (fractions of the side) of a dataset's first ``limit`` samples.

    Returns ``None`` when the samples carry no landmarks (e.g. generated data, whose crops
    follow the alignment template instead).
    """
    from synthface.pipeline.shards import iter_samples

    found = []
    for k, sample in enumerate(iter_samples(dataset_dir, split, decode=True)):
        if k >= limit:
            break
        meta = sample.get("meta") or {}
        marks = meta.get("landmarks")
        if marks is None:
            continue
        side = sample["image"].shape[1]
        found.append(np.asarray(marks, dtype=np.float64) / side)
    if not found:
        return None
    return np.mean(found, axis=0).round(4).tolist()
