"""Comparison-tree images as a recognizer sees them: optionally aligned, then resized.

FRCSyn's evaluation images are not all crops on the ArcFace template; a recognizer trained
on aligned crops loses accuracy on anything else. :class:`TreeAlignment` runs the
project's aligner (``synthface.pipeline.faces``: landmarks from a sidecar file or a
detector, the face policy, insightface's ``norm_crop`` warp) on each image, exactly as
``shards from-folder --align`` does, and keeps the crop in memory instead of re-encoding
it, so aligned scoring equals scoring crops written losslessly beforehand.

Every comparison needs a score, so an image the face policy skips (no face; several
faces under ``skip``) is scored on the whole image, resized, and counted
(``scored_unaligned``); the ``fail`` policy stops at it instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthface.pipeline.faces.align import align_face
from synthface.pipeline.faces.aligner import AlignConfig, Aligner
from synthface.pipeline.faces.select import Face
from synthface.pipeline.limits import open_image

__all__ = ["TreeAlignment", "load_tree_image"]

_SKIPPED = object()  # memo value of an image the face policy skipped


class TreeAlignment:
    """Aligns the images of one tree; the face chosen for an image is kept, so the second
    system scored on the tree reuses it (no second detection, outcomes counted once)."""

    def __init__(self, cfg: AlignConfig) -> None:
        self.aligner = Aligner(cfg)
        self._faces: dict[str, Face | object] = {}

    @property
    def cfg(self) -> AlignConfig:
        return self.aligner.cfg

    def crop(self, rel: str, pixels: np.ndarray, where: str) -> np.ndarray | None:
        """The ``cfg.size`` aligned crop of the image at ``rel``, or None (policy skip)."""
        face = self._faces.get(rel)
        if face is None:
            chosen, _ = self.aligner.choose(rel, pixels, where)
            face = self._faces[rel] = _SKIPPED if chosen is None else chosen
        if face is _SKIPPED:
            return None
        crop, _ = align_face(pixels, face.landmarks, self.cfg.size, where)
        return crop

    def summary(self) -> dict:
        s = self.aligner.summary()
        return {
            "aligned_by": "detector" if self.cfg.detector else "landmarks",
            "source": self.cfg.detector or self.cfg.landmarks,
            "policy": self.cfg.policy,
            "size": self.cfg.size,
            **s,
            "scored_unaligned": s["skipped_no_face"] + s["skipped_multi_face"],
        }


def load_tree_image(
    images_dir: Path, rel: str, size: tuple[int, int], alignment: TreeAlignment | None = None
) -> np.ndarray:
    """``images_dir/rel`` as H x W x 3 uint8 at ``size`` (H, W): aligned first when asked,
    resized (PIL bilinear) when the image or crop is not already that size."""
    from PIL import Image

    path = images_dir / rel
    im = open_image(path)
    if alignment is not None:
        crop = alignment.crop(rel, np.asarray(im), str(path))
        if crop is not None:
            im = Image.fromarray(crop)
    if im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(im)
