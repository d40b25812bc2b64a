"""Small convolutional networks shared by MinusFace's generator and the inversion attacks.

``UNet`` maps C-channel maps to C'-channel maps of the same size (encoder of stride-2
stages, decoder with skip connections); ``TemplateDecoder`` maps a vector to an image.
Widths are arguments: the reference's MinusFace generator has 4 down / 4 up stages of
64..1024 channels at 112 px; CPU runs use 2-3 stages of 32..128.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net: ``len(widths) - 1`` stride-2 down stages, as many up stages with skips.

    Args:
        in_channels, out_channels: channels of input and output maps.
        widths: channels per level, finest first (e.g. ``(32, 64, 128)``).
        out_activation: ``tanh`` for images in [-1, 1], ``none`` for unbounded maps.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        widths: Sequence[int] = (32, 64, 128),
        out_activation: str = "none",
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"UNet widths must be positive integers, got {list(widths)}")
        if out_activation not in ("none", "tanh"):
            raise ValueError(f"out_activation must be 'none' or 'tanh', got {out_activation!r}")
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_conv_block(cin, w))
            cin = w
        self.up = nn.ModuleList(
            _conv_block(widths[i + 1] + widths[i], widths[i])
            for i in reversed(range(len(widths) - 1))
        )
        self.out = nn.Conv2d(widths[0], out_channels, 1)
        self.tanh = out_activation == "tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        x = self.out(x)
        return torch.tanh(x) if self.tanh else x


class TemplateDecoder(nn.Module):
    """Vector -> RGB image in [-1, 1]: a linear layer to a coarse map, then up-sampling convs."""

    def __init__(self, in_features: int, size: int, width: int = 128, levels: int = 3) -> None:
        super().__init__()
        self.start = max(1, -(-size // 2**levels))
        self.size, self.width = size, width
        self.fc = nn.Linear(in_features, width * self.start * self.start)
        blocks = []
        c = width
        for _ in range(levels):
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(c, c // 2, 3, padding=1, bias=False),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(inplace=True),
            ]
            c //= 2
        self.body = nn.Sequential(*blocks)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        x = self.fc(v.flatten(1)).view(-1, self.width, self.start, self.start)
        x = self.out(self.body(x))
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.tanh(x)
