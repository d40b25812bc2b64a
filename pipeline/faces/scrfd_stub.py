"""A stand-in detector: an ONNX graph with SCRFD's signature that reports fixed faces.

No real face detector can be downloaded on the machines this project is built on, so the
detection path (``insightface.model_zoo`` routing, letterboxing, per-stride decoding of
scores, box distances and keypoint offsets, NMS, our policy and warp) is exercised with
this graph instead: it has one ``1 x 3 x S x S`` input and SCRFD's nine outputs (scores,
boxes, keypoints for strides 8, 16 and 32 with two anchors per cell), whose values encode
the faces it is given, whatever the image. It detects nothing; it is a test double used by
the tests and ``bench/align.py``, and the docs say so wherever it is used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

STRIDES = (8, 16, 32)
ANCHORS = 2


def scrfd_outputs(
    faces: Sequence[tuple[Sequence[float], np.ndarray, float]], size: int
) -> list[np.ndarray]:
    """SCRFD's raw outputs for ``faces`` = ``[(x1 y1 x2 y2, (5, 2) keypoints, score)]`` given
    in detector-input pixels: each face sits on the stride-8 anchor nearest its box centre,
    with box distances and keypoint offsets in stride units (the inverse of the decoder)."""
    outs = []
    for stride in STRIDES:
        cells = (size // stride) ** 2 * ANCHORS
        outs.append((np.zeros((cells, 1), np.float32), np.zeros((cells, 4)), np.zeros((cells, 10))))
    scores, boxes, kps = outs[0]
    width = size // STRIDES[0]
    for box, points, score in faces:
        x1, y1, x2, y2 = (float(v) for v in box)
        col = min(max(round((x1 + x2) / 2 / STRIDES[0]), 0), width - 1)
        row = min(max(round((y1 + y2) / 2 / STRIDES[0]), 0), width - 1)
        i = (row * width + col) * ANCHORS
        ax, ay = col * STRIDES[0], row * STRIDES[0]
        scores[i, 0] = score
        boxes[i] = np.array([ax - x1, ay - y1, x2 - ax, y2 - ay]) / STRIDES[0]
        kps[i] = ((np.asarray(points, np.float64) - [ax, ay]) / STRIDES[0]).reshape(-1)
    return (
        [o[0] for o in outs]
        + [o[1].astype(np.float32) for o in outs]
        + [o[2].astype(np.float32) for o in outs]
    )


def write_fixed_scrfd(
    path: str | os.PathLike,
    faces: Sequence[tuple[Sequence[float], np.ndarray, float]],
    size: int = 640,
) -> None:
    """Write the stand-in to ``path`` (fixed ``size`` x ``size`` input, opset 13)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    values = scrfd_outputs(faces, size)
    kinds = ("score", "bbox", "kps")
    names = [f"{kinds[k]}_{s}" for k in range(3) for s in STRIDES]
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outputs = []
    for name, value in zip(names, values):
        inits.append(numpy_helper.from_array(value, f"{name}_value"))
        nodes.append(helper.make_node("Add", [f"{name}_value", "nothing"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(
        nodes,
        "scrfd_stand_in",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    from synthface.pipeline.atomic import atomic_path

    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
