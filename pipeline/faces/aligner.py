"""One source image in, one aligned crop (or a counted skip) out: ``from-folder --align``.

Landmarks come from a sidecar file when one is given (no detector runs), otherwise from
the detector. The chosen face is warped to the ArcFace template and re-encoded; its
source-image landmarks, detection score and box, the number of faces found and where the
landmarks landed in the crop go into the sample's metadata, so a later stage can re-align
differently or filter on the score.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from synthface.pipeline.config import StrictModel
from synthface.pipeline.faces.align import ALIGNED_SIZE, align_face
from synthface.pipeline.faces.select import Face, choose_face

OUTCOMES = ("one", "largest", "no_face", "multi_face")


class AlignConfig(StrictModel):
    """How ``from-folder --align`` finds and warps faces (recorded in the dataset config)."""

    detector: str | None = Field(default=None, description="insightface detection .onnx")
    landmarks: str | None = Field(default=None, description="sidecar landmarks file")
    policy: Literal["largest", "skip", "fail"] = "largest"
    size: int = Field(default=ALIGNED_SIZE, gt=0)
    det_size: int = Field(default=640, ge=32)
    det_thresh: float = Field(default=0.5, gt=0, lt=1)
    image_format: Literal["jpg", "png"] = "jpg"

    @model_validator(mode="after")
    def _one_source(self) -> AlignConfig:
        if (self.detector is None) == (self.landmarks is None):
            raise ValueError("give exactly one of a detector model or a landmarks file")
        if self.size % 112 and self.size % 128:
            raise ValueError(f"aligned size {self.size} must be a multiple of 112 or 128")
        return self


def _round(values, digits: int = 3) -> Any:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


class Aligner:
    """Stateful over one conversion: holds the detector or sidecar and counts outcomes."""

    def __init__(self, cfg: AlignConfig) -> None:
        self.cfg = cfg
        self.counts: Counter[str] = Counter({k: 0 for k in OUTCOMES})
        self.detector = None
        self.sidecar: dict[str, list[Face]] | None = None
        self._used: set[str] = set()
        self._lock = threading.Lock()
        if cfg.landmarks is not None:
            from synthface.pipeline.faces.sidecar import read_sidecar

            self.sidecar = read_sidecar(cfg.landmarks)
        else:
            from synthface.pipeline.faces.detect import FaceDetector

            self.detector = FaceDetector(
                cfg.detector, det_size=cfg.det_size, det_thresh=cfg.det_thresh
            )

    def choose(self, rel: str, pixels: np.ndarray, where: str) -> tuple[Face | None, int]:
        """``(face to align or None, faces found)`` for the image at ``rel``, counted.

        Safe to call from several threads (FRCSyn scoring loads images on a pool): the
        detector and the counts are used under a lock; the warp needs none.
        """
        with self._lock:
            if self.sidecar is not None:
                faces = self.sidecar.get(rel, [])
                self._used.add(rel)
            else:
                faces = self.detector.detect(pixels)
            face, outcome = choose_face(faces, self.cfg.policy, where)
            self.counts[outcome] += 1
        return face, len(faces)

    def __call__(self, rel: str, pixels: np.ndarray, where: str) -> tuple[bytes, dict] | None:
        """``(encoded crop, metadata)`` for the image at ``rel`` inside SRC, or None (skipped)."""
        from synthface.pipeline.shards.sample import encode_image

        face, found = self.choose(rel, pixels, where)
        if face is None:
            return None
        crop, landed = align_face(pixels, face.landmarks, self.cfg.size, where)
        meta = {
            "landmarks": _round(face.landmarks),
            "aligned_landmarks": _round(landed),
            "det_score": None if face.score is None else round(float(face.score), 5),
            "bbox": None if face.bbox is None else _round(face.bbox),
            "faces_found": found,
            "aligned_by": "detector" if self.detector is not None else "landmarks",
        }
        return encode_image(crop, self.cfg.image_format), meta

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "aligned": self.counts["one"] + self.counts["largest"],
            "largest_of_several": self.counts["largest"],
            "skipped_no_face": self.counts["no_face"],
            "skipped_multi_face": self.counts["multi_face"],
        }
        if self.sidecar is not None:
            out["landmark_entries_without_image"] = len(set(self.sidecar) - self._used)
        return out
