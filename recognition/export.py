"""ONNX export that insightface loads as ``ArcFaceONNX`` and that reproduces the torch model.

How insightface will read the file (``insightface/model_zoo``, checked in the installed
package): ``get_model(path)`` routes any model with a square input of side >= 112 and
divisible by 16 to ``ArcFaceONNX``. ``ArcFaceONNX`` assumes the normalisation happens
outside the graph (mean = std = 127.5) unless a ``Sub``- and a ``Mul``-named node appear
among the first eight nodes; ``get_feat`` turns BGR crops into an RGB blob
(``blobFromImages(..., swapRB=True)``) of (x - 127.5) / 127.5. That is exactly our
backbones' input (RGB in [-1, 1]), so the graph is the bare backbone: no channel swap,
no normalisation inside, input ``data`` (dynamic batch), output ``fc1``.

The export is verified before it is kept: onnxruntime on random inputs must match the
torch model within 1e-4 after L2 normalisation, and insightface must pick mean 127.5.
The file appears at its final path only after both checks (temporary file + rename).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from synthface.pipeline.atomic import atomic_path
from synthface.pipeline.errors import InputError

INPUT_NAME = "data"
OUTPUT_NAME = "fc1"
DEFAULT_OPSET = 17
TOLERANCE = 1e-4
_NORMALISATION_PREFIXES = ("Sub", "_minus", "Mul", "_mul")


def insightface_routes_to_arcface(height: int, width: int) -> bool:
    """insightface ModelRouter's rule for recognizers: square, >= 112, multiple of 16."""
    return height == width and height >= 112 and height % 16 == 0


def _check_exportable(model: nn.Module, allow_any_size: bool) -> tuple[int, int]:
    spec = getattr(model, "spec", None)
    if not spec:
        raise InputError(
            f"cannot export {type(model).__name__}: only backbones built by create_backbone "
            "(or loaded with load_recognizer) can be exported"
        )
    name = spec["name"]
    if model.input_channels != 3:
        raise InputError(
            f"cannot export backbone {name!r} with input_channels={model.input_channels}: "
            "insightface recognizers take 3-channel images (DCT-input models are not supported)"
        )
    h, w = model.input_size
    if not allow_any_size and not insightface_routes_to_arcface(h, w):
        raise InputError(
            f"cannot export backbone {name!r} with input_size {h}x{w} for insightface: "
            "ArcFaceONNX needs a square input >= 112 divisible by 16 (pass allow_any_size / "
            "--any-size to export anyway for onnxruntime use)"
        )
    return h, w


def _rename_normalisation_lookalikes(graph) -> None:
    """Keep insightface from mistaking our first nodes for baked-in normalisation."""
    for i, node in enumerate(graph.node[:8]):
        if node.name.startswith(_NORMALISATION_PREFIXES):
            node.name = f"synthface_{i}_{node.name}"


def _verify(path: str, model: nn.Module, hw: tuple[int, int], n: int = 4) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, *hw, generator=gen) * 2 - 1
    with torch.inference_mode():
        ref = model(x).float().numpy()
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]

    def unit(a):
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    return float(np.abs(unit(ref) - unit(got)).max())


def export_onnx(
    model: nn.Module | str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    allow_any_size: bool = False,
) -> dict[str, Any]:
    """Export a backbone (or checkpoint directory) to ``out_path``.

    Returns:
        ``{"path", "input_shape", "embedding_dim", "max_abs_diff", "input_mean", "input_std"}``.

    Raises:
        InputError: unsupported model (not from ``create_backbone``, non-RGB input, or an
            input size insightface would not treat as a recognizer), or a failed check.
    """
    import onnx

    if not isinstance(model, nn.Module):
        from synthface.recognition.checkpoint import load_recognizer

        model = load_recognizer(model)
    hw = _check_exportable(model, allow_any_size)
    # a private copy: exporting must not move the caller's model or flip it to eval mode
    model = copy.deepcopy(model).to("cpu").eval()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp_path:
        tmp = str(tmp_path)
        dummy = torch.zeros(1, 3, *hw)
        with warnings.catch_warnings():
            # the TorchScript exporter is deprecated in torch >= 2.9; the dynamo exporter
            # needs onnxscript, which this project does not depend on
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                tmp,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(tmp)
        _rename_normalisation_lookalikes(proto.graph)
        onnx.helper.set_model_props(
            proto,
            {"synthface.backbone": str(model.spec), "synthface.input": "RGB (x-127.5)/127.5"},
        )
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        diff = _verify(tmp, model, hw)
        if not diff < TOLERANCE:
            raise InputError(
                f"{out}: exported model differs from torch by {diff:.2e} (> {TOLERANCE})"
            )
        import onnxruntime
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        probe = ArcFaceONNX(
            model_file=tmp,
            session=onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"]),
        )
        if (probe.input_mean, probe.input_std) != (127.5, 127.5):
            raise InputError(
                f"{out}: insightface would read normalisation {probe.input_mean}/{probe.input_std}"
            )
    return {
        "path": str(out),
        "input_shape": ["batch", 3, *hw],
        "embedding_dim": int(model.embedding_dim),
        "max_abs_diff": diff,
        "input_mean": 127.5,
        "input_std": 127.5,
    }
