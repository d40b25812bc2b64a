"""Which face of an image to align: the no-face / several-faces policy.

``largest`` aligns the largest face of several and skips images without one; ``skip``
skips both kinds of image; ``fail`` stops at the first of either. Size is the detection
box area, or, for landmarks without a box, the area of the landmarks' bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from synthface.pipeline.errors import InputError

Policy = Literal["largest", "skip", "fail"]
POLICIES: tuple[str, ...] = ("largest", "skip", "fail")


@dataclass(frozen=True)
class Face:
    landmarks: np.ndarray  # (5, 2) float, source-image pixels
    score: float | None = None  # detector confidence; None for sidecar landmarks without one
    bbox: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2

    def size(self) -> float:
        if self.bbox is not None:
            x1, y1, x2, y2 = self.bbox
        else:
            (x1, y1), (x2, y2) = self.landmarks.min(0), self.landmarks.max(0)
        return float(max(x2 - x1, 0) * max(y2 - y1, 0))


def choose_face(faces: list[Face], policy: Policy, where: str) -> tuple[Face | None, str]:
    """``(face or None, outcome)`` with outcome ``one``, ``largest``, ``no_face`` or
    ``multi_face`` (the last two mean: skipped); ``fail`` raises instead of skipping."""
    if policy not in POLICIES:
        raise InputError(f"face policy {policy!r}: must be one of {', '.join(POLICIES)}")
    if len(faces) == 1:
        return faces[0], "one"
    if not faces:
        if policy == "fail":
            raise InputError(f"{where}: no face found (face policy 'fail')")
        return None, "no_face"
    if policy == "fail":
        raise InputError(f"{where}: {len(faces)} faces found (face policy 'fail')")
    if policy == "skip":
        return None, "multi_face"
    return max(faces, key=Face.size), "largest"
