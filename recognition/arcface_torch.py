"""arcface_torch ``backbone.pth`` files -> project recognizer checkpoints.

arcface_torch saves ``backbone.module.state_dict()`` of its iResNets with
``torch.save``. Our :class:`~synthface.recognition.backbones.iresnet.IResNet` has the same
modules under the same names (stem ``conv1 bn1 prelu``; ``layerS.B.{bn1 conv1 bn2 prelu
conv2 bn3}`` plus ``layerS.0.downsample.{0,1}``; ``bn2 fc features``) and computes the
same function, so the state dict loads as it is. What this module adds: reading the file
without unpickling code (``torch.load(weights_only=True)``), working out the architecture
from the keys and shapes (stage depths, widths, embedding size, input size from the FC
width), a strict load that names every missing, unexpected or misshaped key, and a
checkpoint directory that ``load_recognizer``, ``export_onnx`` and every other command take.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from synthface.pipeline.atomic import file_sha256
from synthface.pipeline.errors import InputError
from synthface.recognition.backbones.iresnet import ARCH_LAYERS

# arcface_torch's registry names for the iResNets
ARCFACE_NAMES = {"r18": "ir18", "r34": "ir34", "r50": "ir50", "r100": "ir100", "r200": "ir200"}
STANDARD_WIDTHS = (64, 128, 256, 512)
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.bn1\.weight$")


def infer_architecture(state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """``{"name", "layers", "widths", "embedding_dim", "fc_cells"}`` from an iResNet state dict.

    ``name`` is our registry name when the depths and widths are a standard arcface_torch
    model (``ir50`` for r50, ...), else ``"tiny"`` (the registered iResNet with free
    ``layers`` and ``widths``).
    """
    blocks: dict[int, set[int]] = {1: set(), 2: set(), 3: set(), 4: set()}
    for key in state:
        m = _BLOCK.match(key)
        if m:
            blocks[int(m.group(1))].add(int(m.group(2)))
    if any(not b for b in blocks.values()) or "fc.weight" not in state:
        raise InputError(
            f"{source}: not an arcface_torch iResNet state dict (needs layer1..layer4 blocks "
            "and fc.weight; MobileFaceNet, ViT and r2060 checkpoints are not supported)"
        )
    layers = []
    for stage, idx in blocks.items():
        if sorted(idx) != list(range(len(idx))):
            raise InputError(
                f"{source}: layer{stage} blocks are not numbered 0..n-1: {sorted(idx)}"
            )
        layers.append(len(idx))
    widths = tuple(int(state[f"layer{s}.0.conv1.weight"].shape[0]) for s in range(1, 5))
    fc = state["fc.weight"]
    if fc.dim() != 2 or fc.shape[1] % widths[-1]:
        raise InputError(f"{source}: fc.weight shape {tuple(fc.shape)} does not follow layer4")
    name = next((n for n, depth in ARCH_LAYERS.items() if depth == tuple(layers)), None)
    if name is None or widths != STANDARD_WIDTHS:
        name = "tiny"
    return {
        "name": name,
        "layers": tuple(layers),
        "widths": widths,
        "embedding_dim": int(fc.shape[0]),
        "fc_cells": int(fc.shape[1]) // widths[-1],
    }


def _input_size(cells: int, input_size: int | None, source: str) -> int:
    side = math.isqrt(cells)
    if side * side != cells:
        raise InputError(f"{source}: fc input covers {cells} cells, not a square feature map")
    if input_size is None:
        return 112 if side == 7 else side * 16
    if math.ceil(input_size / 16) != side:
        raise InputError(
            f"{source}: fc expects a {side}x{side} feature map, which input size {input_size} "
            f"does not give (it gives {math.ceil(input_size / 16)}x{math.ceil(input_size / 16)})"
        )
    return input_size


def import_arcface_torch(
    weights: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    arch: str | None = None,
    input_size: int | None = None,
) -> dict[str, Any]:
    """Load an arcface_torch iResNet ``backbone.pth`` strictly and save it as a checkpoint.

    Args:
        weights: the ``.pth``/``.pt`` state dict (or ``.safetensors``).
        out_dir: checkpoint directory to write (``save_recognizer`` layout).
        arch: arcface_torch name (``r50``) or ours (``ir50``) to insist on; inferred
            from the keys when omitted.
        input_size: image side the model was trained at (default: 112 for a 7x7 FC).

    Raises:
        InputError: not a plain tensor state dict (nothing is unpickled), not an iResNet,
            another architecture than ``arch``, or keys/shapes that do not fit — every
            missing, unexpected and misshaped key named.
    """
    from synthface.recognition.backbones import create_backbone
    from synthface.recognition.checkpoint import load_weights, read_state_dict, save_recognizer

    path = Path(weights)
    state = read_state_dict(path)
    found = infer_architecture(state, str(path))
    if arch is not None:
        want = ARCFACE_NAMES.get(arch, arch)
        if want not in ARCH_LAYERS:
            raise InputError(
                f"--arch {arch!r}: not an arcface_torch iResNet "
                f"(known: {', '.join([*ARCFACE_NAMES, *ARCH_LAYERS])})"
            )
        if found["name"] != want:
            raise InputError(
                f"{path}: holds an iResNet with stages {list(found['layers'])} and widths "
                f"{list(found['widths'])}, not {arch} (stages {list(ARCH_LAYERS[want])})"
            )
    size = _input_size(found["fc_cells"], input_size, str(path))
    extra = {}
    if found["name"] == "tiny":
        extra = {"layers": list(found["layers"]), "widths": list(found["widths"])}
    model = create_backbone(
        found["name"], input_size=size, embedding_dim=found["embedding_dim"], **extra
    )
    load_weights(model, state, source=str(path))
    digest, _ = file_sha256(path)
    save_recognizer(
        model.eval(),
        out_dir,
        config={"imported_from": {"format": "arcface_torch", "file": path.name, "sha256": digest}},
    )
    return {
        "out": str(out_dir),
        "backbone": found["name"],
        "layers": list(found["layers"]),
        "widths": list(found["widths"]),
        "embedding_dim": found["embedding_dim"],
        "input_size": size,
        "tensors": len(state),
        "source_sha256": digest,
    }
