"""The frozen identity encoder f_FR that drives the ID³ loss and identity guidance.

Both need d cos(f(x0_hat), y) / d x0_hat, so the encoder is a torch module: a recognizer
checkpoint directory (``load_recognizer``) or an insightface-style ``.onnx`` recognizer
converted to torch operations (``synthface.recognition.onnx_to_torch``, gradients through
every node, outputs equal to onnxruntime's). Asked for a non-differentiable encoder (to
embed only), an ONNX file runs on onnxruntime instead, which is faster on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synthface.pipeline.errors import ConfigError, InputError


class IdentityEncoder(nn.Module):
    """Frozen recognizer: images in [-1, 1] (N,3,H,W), any size -> unit embeddings (N, D)."""

    differentiable = True

    def __init__(self, model: nn.Module, input_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        if isinstance(input_size, (tuple, list)):
            self.input_hw = (int(input_size[0]), int(input_size[1]))
        else:
            self.input_hw = (int(input_size), int(input_size))
        self.input_size = (
            self.input_hw[0] if self.input_hw[0] == self.input_hw[1] else self.input_hw
        )

    def train(self, mode: bool = True) -> IdentityEncoder:  # stays in eval mode (frozen BN)
        super().train(False)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.input_hw:
            images = nn.functional.interpolate(
                images, size=self.input_hw, mode="bilinear", antialias=True
            )
        param = next(self.model.parameters(), None)
        if param is not None:
            images = images.to(param.dtype)
        return nn.functional.normalize(self.model(images).float(), dim=1)

    @torch.no_grad()
    def embed_uint8(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC RGB -> (N, D) float32 unit embeddings (on the encoder's device)."""
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
        return self(x / 127.5 - 1.0).cpu().numpy().astype(np.float32)


class EmbedderEncoder:
    """Non-differentiable wrapper of ``synthface.recognition.load_embedder`` (ONNX or torch)."""

    differentiable = False

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self.input_size = embedder.input_size

    def embed_uint8(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.embedder.embed(images), dtype=np.float32)


def _input_size(model: nn.Module, path: Path) -> int | tuple[int, int]:
    size = getattr(model, "input_size", None)
    if size is None and (path / "config.json").is_file():
        data = json.loads((path / "config.json").read_text())
        stack = [data]
        while stack and size is None:
            node = stack.pop()
            if isinstance(node, dict):
                size = node.get("input_size")
                stack.extend(v for v in node.values() if isinstance(v, dict))
    if isinstance(size, (list, tuple)):
        return (int(size[0]), int(size[-1]))
    return int(size or 112)


def load_identity_encoder(path: str | Path, *, differentiable: bool = True):
    """Load the frozen encoder at ``path``.

    A directory is a torch recognizer checkpoint (``synthface.recognition.load_recognizer``).
    A ``.onnx`` file becomes a differentiable torch module
    (``synthface.recognition.onnx_to_torch``) when ``differentiable``, else an onnxruntime
    embedder (``synthface.recognition.load_embedder``). An ONNX graph with an operator the
    converter lacks is an ``InputError`` naming it.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: identity encoder not found")
    try:
        from synthface import recognition
    except ImportError as exc:  # pragma: no cover - the package ships with synthface
        raise ConfigError(f"cannot import the recognition package ({exc})") from None
    if path.suffix == ".onnx":
        if differentiable:
            model = recognition.onnx_to_torch(path)
            return IdentityEncoder(model, model.input_size)
        return EmbedderEncoder(recognition.load_embedder(str(path)))
    model = recognition.load_recognizer(path)
    return IdentityEncoder(model, _input_size(model, path))
