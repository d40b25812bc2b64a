"""The 5-point similarity alignment every ArcFace-family recognizer was trained on.

Landmarks are (x, y) pixel coordinates with pixel centres at integers (OpenCV's
convention), in insightface's order: image-left eye, image-right eye, nose tip,
image-left mouth corner, image-right mouth corner. ``estimate_norm`` and ``norm_crop`` are
insightface's own (``insightface.utils.face_align``: a least-squares similarity from the
landmarks to ``arcface_dst``, then ``cv2.warpAffine`` with a black border), called rather
than re-implemented so that crops match what the recognizers saw in training.
"""

from __future__ import annotations

import warnings

import numpy as np

from synthface.pipeline.errors import InputError

ALIGNED_SIZE = 112
# insightface.utils.face_align.arcface_dst, for reference and tests
ARCFACE_DST = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def check_landmarks(landmarks, where: str) -> np.ndarray:
    arr = np.asarray(landmarks, dtype=np.float64)
    if arr.shape != (5, 2) or not np.isfinite(arr).all():
        raise InputError(f"{where}: landmarks must be 5 finite (x, y) points, got {arr.tolist()}")
    return arr


def similarity_matrix(landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The 2x3 matrix mapping image points onto the template at ``size`` (insightface's)."""
    from insightface.utils import face_align

    with warnings.catch_warnings():
        # scikit-image >= 0.26 deprecates SimilarityTransform.estimate, which insightface calls
        warnings.simplefilter("ignore", FutureWarning)
        return face_align.estimate_norm(np.asarray(landmarks, np.float32), size).astype(np.float64)


def warp(image: np.ndarray, matrix: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """``norm_crop``'s warp: bilinear, black outside the image."""
    import cv2

    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), borderValue=0.0)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return np.asarray(points, np.float64) @ matrix[:, :2].T + matrix[:, 2]


def align_face(
    image: np.ndarray, landmarks, size: int = ALIGNED_SIZE, where: str = "<image>"
) -> tuple[np.ndarray, np.ndarray]:
    """``(crop, aligned_landmarks)``: the ``size`` x ``size`` crop and where the landmarks
    landed in it (their distance to the template is the face's shape residual)."""
    if size % 112 and size % 128:
        raise InputError(f"aligned size {size}: must be a multiple of 112 or 128 (insightface)")
    lmk = check_landmarks(landmarks, where)
    matrix = similarity_matrix(lmk, size)
    return warp(image, matrix, size), transform_points(lmk, matrix)
