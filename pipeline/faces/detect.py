"""Face detection with an insightface detection model the user supplies.

``insightface.model_zoo.get_model(path)`` routes any ONNX model with five or more outputs
to its SCRFD/RetinaFace wrapper, which letterboxes the image into the detector's input
size, decodes the per-stride score, box and keypoint maps, and applies NMS. We call it as
insightface's own ``FaceAnalysis`` does (BGR input, CPU provider, ``det_thresh``,
``input_size``) and keep only faces with keypoints: a detector without a landmark head
cannot drive alignment. The time spent inside the detector is accumulated so that
benchmarks can separate detection from decoding, warping and writing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.pipeline.faces.select import Face


class FaceDetector:
    """An SCRFD/RetinaFace ONNX model through ``insightface.model_zoo``.

    Args:
        path: the ``.onnx`` file (e.g. ``det_10g.onnx`` from a ``buffalo_l`` pack).
        det_size: side of the square detector input (models with a fixed input use theirs).
        det_thresh: minimum face score.
    """

    def __init__(
        self, path: str | os.PathLike, *, det_size: int = 640, det_thresh: float = 0.5
    ) -> None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such detector model")
        if not 0.0 < det_thresh < 1.0:
            raise InputError(f"detection threshold {det_thresh}: must be in (0, 1)")
        if det_size < 32 or det_size % 32:
            raise InputError(f"detector input size {det_size}: must be a multiple of 32")
        from insightface.model_zoo import get_model

        try:
            model = get_model(str(p), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime and onnx raise several types
            raise InputError(f"{p}: not a loadable ONNX model ({exc})") from None
        if model is None or not hasattr(model, "detect"):
            kind = type(model).__name__ if model is not None else "nothing"
            raise InputError(
                f"{p}: not a face detection model (insightface routes it to {kind}; a "
                "detector has score, box and keypoint outputs per stride)"
            )
        if not getattr(model, "use_kps", False):
            raise InputError(
                f"{p}: this detector predicts no keypoints, so it cannot drive 5-point alignment"
            )
        model.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=det_thresh)
        self.model = model
        self.path = str(p)
        self.det_size = det_size
        self.det_thresh = det_thresh
        self.seconds = 0.0
        self.calls = 0

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Faces in an HxWx3 uint8 RGB image, highest score first."""
        bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
        start = time.perf_counter()
        boxes, kpss = self.model.detect(bgr, input_size=(self.det_size, self.det_size))
        self.seconds += time.perf_counter() - start
        self.calls += 1
        if kpss is None:
            return []
        return [
            Face(
                landmarks=np.asarray(kps, dtype=np.float64),
                score=float(box[4]),
                bbox=tuple(float(v) for v in box[:4]),
            )
            for box, kps in zip(boxes, kpss)
        ]
