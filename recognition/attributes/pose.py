"""Head pose (yaw, pitch, roll in degrees) from 68 3-D landmarks, in the world's convention.

insightface's ``1k3d68.onnx`` predicts 68 landmarks with depth; a head pose is the
rotation that carries a frontal mean face onto them. The mean face is the one insightface
ships for this purpose (``insightface/data/objects/meanshape_68.pkl``, a 68 x 3 array):
using it keeps pose zero where insightface puts it. It is a pickle, so it is read through
an allow-list unpickler that can build numpy arrays and nothing else.

The rotation is fitted by least squares over all 68 points (Umeyama: centred points,
one SVD, no reflection) and split into angles in the procedural world's convention
(``synthface.pipeline.world.render``: R = Rz(roll) Rx(pitch) Ry(yaw) in a frame with x
right, y up and z towards the viewer; positive yaw turns the nose to the image's right,
positive pitch lowers it, positive roll turns the eye line anticlockwise), so that pose
from insightface's model and from the world-trained estimator mean the same numbers.
"""

from __future__ import annotations

import pickle
from functools import cache
from pathlib import Path

import numpy as np

from synthface.pipeline.errors import InputError

NUM_LANDMARKS = 68
# Image coordinates (x right, y down, z towards the viewer) -> the world's head frame.
_TO_WORLD = np.array([1.0, -1.0, 1.0])
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays only: any other global in the stream is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_array_pickle(path: str | Path) -> np.ndarray:
    """A pickled numpy array, read without running anything but array construction."""
    try:
        with open(path, "rb") as f:
            arr = _ArrayUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a readable pickled numpy array ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.hasobject:
        raise InputError(f"{path}: does not hold a numeric numpy array")
    return arr


@cache
def mean_shape() -> np.ndarray:
    """insightface's frontal 68-point mean face (68, 3), image coordinates."""
    import insightface

    path = Path(insightface.__file__).parent / "data" / "objects" / "meanshape_68.pkl"
    if not path.is_file():
        raise InputError(
            f"{path}: insightface's 68-point mean face is missing (reinstall insightface); "
            "head pose from --landmark-model needs it"
        )
    shape = read_array_pickle(path).astype(np.float64)
    if shape.shape != (NUM_LANDMARKS, 3):
        raise InputError(f"{path}: expected a 68 x 3 array, got {shape.shape}")
    return shape


def rotation_to_angles(rot: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations R = Rz(roll) Rx(pitch) Ry(yaw) -> (N, 3) yaw, pitch, roll (deg)."""
    r = np.asarray(rot, dtype=np.float64)
    pitch = np.arcsin(np.clip(r[:, 2, 1], -1.0, 1.0))
    yaw = np.arctan2(-r[:, 2, 0], r[:, 2, 2])
    roll = np.arctan2(-r[:, 0, 1], r[:, 1, 1])
    return np.rad2deg(np.stack([yaw, pitch, roll], axis=1))


def fit_rotation(reference: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotations that best carry ``reference`` (K, 3) onto each of ``points``
    (N, K, 3) up to scale and translation (Umeyama; reflections excluded)."""
    ref = reference - reference.mean(axis=0)
    pts = points - points.mean(axis=1, keepdims=True)
    cov = np.einsum("nki,kj->nij", pts, ref)  # sum_k p_k r_k^T
    u, _, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.ones((len(points), 3))
    fix[:, 2] = d
    return (u * fix[:, None, :]) @ vt


def pose_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(N, 68, 3) landmarks in image coordinates -> (N, 3) yaw, pitch, roll in degrees."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (NUM_LANDMARKS, 3):
        raise InputError(f"3-D landmarks must be N x 68 x 3, got {pts.shape}")
    rot = fit_rotation(mean_shape() * _TO_WORLD, pts * _TO_WORLD)
    return rotation_to_angles(rot)
