"""The user's insightface attribute models on aligned crops, batched: pose and age.

Two models of insightface's model packs (``buffalo_l`` and others) are read:

* ``1k3d68.onnx``: one N x 3 x 192 x 192 input, one N x 3309 output whose last 68 rows of
  (x, y, z) are landmarks in [-1, 1] crop units (insightface's ``Landmark``); the head
  pose is fitted to them (:mod:`.pose`).
* ``genderage.onnx``: one N x 3 x 96 x 96 input, one N x 3 output: two gender scores
  (female, male) and age / 100 (insightface's ``Attribute``).

insightface feeds them a crop around a detector box enlarged 1.5 times. An aligned
crop has no detector box; its face fills the central two thirds of the crop (the
ArcFace template), so that is taken as the box and the model sees the whole crop,
resampled like insightface does (an OpenCV bilinear warp). Pixels go in as RGB,
``(x - 127.5) / 128``, or raw for MXNet-converted graphs that normalise inside
(insightface's test: a Sub and a Mul, or ``bn_data``, among the first nodes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.recognition.attributes.pose import NUM_LANDMARKS, pose_from_landmarks

LANDMARK_INPUT = 192
LANDMARK_OUTPUT = 3309  # 1103 points x 3; the last 68 are the 68-point landmarks
GENDERAGE_INPUT = 96
BOX_ENLARGE = 1.5


def input_normalisation(path: str) -> tuple[float, float]:
    """(mean, std) of the pixels the graph expects (module docstring)."""
    import onnx

    try:
        nodes = onnx.load(path, load_external_data=False).graph.node[:8]
    except Exception as exc:  # onnx raises protobuf and OS errors of many types
        raise InputError(f"{path}: not a readable ONNX model ({exc})") from None
    sub = mul = False
    for i, node in enumerate(nodes):
        sub = sub or node.name.startswith(("Sub", "_minus"))
        mul = mul or node.name.startswith(("Mul", "_mul"))
        if i < 3 and node.name == "bn_data":
            sub = mul = True
    return (0.0, 1.0) if sub and mul else (127.5, 128.0)


def crop_for_model(image: np.ndarray, side: int) -> np.ndarray:
    """An aligned H x W x 3 crop warped to ``side`` x ``side`` as insightface crops a face
    box: the central 1/1.5 of the crop is the box, so the whole crop fills the input."""
    import cv2

    h, w = image.shape[:2]
    scale = side / max(h, w)  # = side / (box side * 1.5) with box side = max(h, w) / 1.5
    m = np.array(
        [[scale, 0.0, side / 2 - w / 2 * scale], [0.0, scale, side / 2 - h / 2 * scale]],
        dtype=np.float64,
    )
    return cv2.warpAffine(np.ascontiguousarray(image), m, (side, side), borderValue=0.0)


class _OnnxModel:
    """One-input, one-output ONNX model of a fixed square input side."""

    side: int
    what: str

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime

        from synthface.recognition.embedder import _providers

        self.path = str(path)
        if not Path(path).is_file():
            raise InputError(f"{path}: no such ONNX file ({self.what})")
        self.input_mean, self.input_std = input_normalisation(self.path)
        opts = onnxruntime.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                self.path, sess_options=opts, providers=_providers(device)
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InputError(f"{path}: not a loadable ONNX model ({exc})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if len(inputs) == 1 else []
        if len(shape) != 4 or shape[1:] != [3, self.side, self.side] or len(outputs) != 1:
            got = [(i.name, i.shape) for i in inputs], [(o.name, o.shape) for o in outputs]
            raise InputError(
                f"{path}: not an insightface {self.what} model (expected one N x 3 x {self.side} "
                f"x {self.side} input and one output, got inputs/outputs {got})"
            )
        self.input_name = inputs[0].name
        self.output_shape = outputs[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def run(self, images: np.ndarray) -> np.ndarray:
        """Aligned RGB uint8 crops (N, H, W, 3) -> the model's raw output (N, K)."""
        crops = np.stack([crop_for_model(im, self.side) for im in images])
        blob = (crops.transpose(0, 3, 1, 2).astype(np.float32) - self.input_mean) / self.input_std
        blob = np.ascontiguousarray(blob, dtype=np.float32)
        if self.fixed_batch is None or self.fixed_batch == len(blob):
            parts = [blob]
        elif self.fixed_batch == 1:
            parts = [blob[i : i + 1] for i in range(len(blob))]
        else:
            raise InputError(f"{self.path}: model has a fixed batch of {self.fixed_batch}")
        return np.concatenate([self.session.run(None, {self.input_name: p})[0] for p in parts])


class LandmarkPoseModel(_OnnxModel):
    """``1k3d68.onnx`` -> yaw, pitch, roll (degrees, the world's convention)."""

    side = LANDMARK_INPUT
    what = "3-D 68-landmark (1k3d68.onnx)"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(path, device, threads)
        if self.output_shape[-1] != LANDMARK_OUTPUT:
            raise InputError(
                f"{path}: output {self.output_shape} is not insightface's 3-D 68-landmark output "
                f"(N x {LANDMARK_OUTPUT}); give 1k3d68.onnx, not a 2-D landmark model"
            )

    def landmarks(self, images: np.ndarray) -> np.ndarray:
        """(N, 68, 3) landmarks in the pixel coordinates of each crop (z scaled like x, y)."""
        pred = (
            self.run(images).reshape(len(images), -1, 3)[:, -NUM_LANDMARKS:, :].astype(np.float64)
        )
        half = self.side // 2
        pred = (pred + np.array([1.0, 1.0, 0.0])) * half  # input pixels, z in the same units
        sides = np.array([max(im.shape[:2]) for im in images], dtype=np.float64)
        scale = sides / self.side
        centre = np.array([[im.shape[1] / 2, im.shape[0] / 2] for im in images])
        out = pred * scale[:, None, None]
        out[:, :, :2] += centre[:, None, :] - half * scale[:, None, None]
        return out

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        pose = pose_from_landmarks(self.landmarks(images))
        return {"yaw": pose[:, 0], "pitch": pose[:, 1], "roll": pose[:, 2]}


class GenderAgeModel(_OnnxModel):
    """``genderage.onnx`` -> age (years) and gender (0 female, 1 male, insightface's)."""

    side = GENDERAGE_INPUT
    what = "gender-age (genderage.onnx)"

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(path, device, threads)
        if self.output_shape[-1] != 3:
            raise InputError(
                f"{path}: output {self.output_shape} is not insightface's gender-age output "
                "(N x 3: two gender scores and age / 100)"
            )

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        pred = self.run(images).astype(np.float64)
        return {
            "age": pred[:, 2] * 100.0,
            "gender": np.argmax(pred[:, :2], axis=1).astype(np.float64),
        }
