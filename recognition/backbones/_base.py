"""What every backbone shares: the input contract and the spatial arithmetic.

Backbones take NCHW float RGB (or ``input_channels`` DCT maps) scaled to [-1, 1] and
return un-normalised ``N x embedding_dim`` features. The input size is fixed when the
model is built because the embedding layer is a fully connected layer over the last
feature map (arcface_torch's "fc_scale"), so its width depends on the image size.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from synthface.pipeline.errors import ConfigError


def as_hw(
    input_size: int | tuple[int, int] | list[int], *, name: str = "input_size"
) -> tuple[int, int]:
    """``112`` or ``(112, 96)`` -> ``(height, width)``, rejecting sizes too small to stride."""
    if isinstance(input_size, int):
        hw = (input_size, input_size)
    elif isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        hw = (int(input_size[0]), int(input_size[1]))
    else:
        raise ConfigError(f"{name} must be an int or [height, width], got {input_size!r}")
    if min(hw) < 16:
        raise ConfigError(f"{name} {list(hw)} is too small: backbones need at least 16x16 pixels")
    return hw


def strided_size(size: int, stride_twos: int) -> int:
    """Spatial size after ``stride_twos`` stride-2 convolutions of kernel 3 / padding 1
    (or kernel 1 / padding 0): each maps n to ceil(n / 2)."""
    for _ in range(stride_twos):
        size = (size + 1) // 2
    return size


def check_positive(value: int, name: str) -> int:
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


class Backbone(nn.Module):
    """Base class: records the constructor arguments so a checkpoint can rebuild the model.

    ``spec`` (set by :func:`synthface.recognition.backbones.create_backbone`) is the JSON-able
    ``{"name": ..., **kwargs}`` that :func:`synthface.recognition.checkpoint.save_recognizer`
    writes to ``config.json``.
    """

    input_size: tuple[int, int]
    input_channels: int
    embedding_dim: int
    spec: dict[str, Any]

    def __init__(self, input_size: tuple[int, int], input_channels: int, embedding_dim: int):
        super().__init__()
        self.input_size = input_size
        self.input_channels = check_positive(input_channels, "input_channels")
        self.embedding_dim = check_positive(embedding_dim, "embedding_dim")
        self.spec = {}
