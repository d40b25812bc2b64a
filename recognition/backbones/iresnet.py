"""Improved ResNet (iResNet) as trained by arcface_torch, plus a tiny variant for tests.

Layout follows arcface_torch's ``iresnet.py`` so its published ``backbone.pth`` state
dicts load by name: stem ``conv1/bn1/prelu`` at full resolution, four stages of
pre-activation basic blocks (BN-conv-BN-PReLU-conv-BN, the stride on the second conv),
each stage halving the resolution, then the embedding output BN-Dropout-FC-BN whose
last BN has its scale frozen at 1 (``features``). Only the FC input width depends on
the input size: ``widths[-1] * ceil(H/16) * ceil(W/16)`` (7x7 at 112x112).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from synthface.recognition.backbones._base import Backbone, as_hw, check_positive, strided_size

BN_EPS = 1e-5


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block; the shortcut is a strided 1x1 conv + BN when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                nn.BatchNorm2d(cout, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(Backbone):
    """iResNet body + BN-Dropout-FC-BN embedding head.

    Args:
        layers: blocks per stage (4 stages).
        widths: channels per stage; the stem uses ``widths[0]``.
        input_size: ``H`` or ``(H, W)`` of the input images.
        input_channels: 3 for RGB; 27/162/189/192 for block-DCT inputs.
        embedding_dim: output feature size.
        dropout: dropout probability before the FC (arcface_torch default 0).
        zero_init_residual: start each block as identity (zero ``bn3`` scale;
            arcface_torch zeroes ``bn2``, which also makes the block an identity).
        init: ``"arcface_torch"`` draws convolution weights from N(0, 0.1) as
            arcface_torch does; ``"kaiming"`` uses Kaiming-normal (fan-out), this
            project's choice for its CPU recipe. Both set BatchNorm to (1, 0) and leave
            the FC layer at PyTorch's default.
    """

    def __init__(
        self,
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        *,
        input_size: int | tuple[int, int] = 112,
        input_channels: int = 3,
        embedding_dim: int = 512,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
        init: str = "arcface_torch",
    ) -> None:
        hw = as_hw(input_size)
        super().__init__(hw, input_channels, embedding_dim)
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"iResNet needs 4 stages, got layers={layers} widths={widths}")
        for w in (*layers, *widths):
            check_positive(int(w), "iResNet layers/widths entry")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if init not in ("arcface_torch", "kaiming"):
            raise ValueError(f"init must be 'arcface_torch' or 'kaiming', got {init!r}")
        self.conv1 = nn.Conv2d(input_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        cin = widths[0]
        for i, (n, cout) in enumerate(zip(layers, widths), start=1):
            blocks = [
                IBasicBlock(cin if b == 0 else cout, cout, 2 if b == 0 else 1) for b in range(n)
            ]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            cin = cout
        out_h, out_w = (strided_size(s, 4) for s in hw)
        self.feature_map = (widths[-1], out_h, out_w)
        self.bn2 = nn.BatchNorm2d(widths[-1], eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(widths[-1] * out_h * out_w, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=BN_EPS)
        self._init_weights(zero_init_residual, init)

    def _init_weights(self, zero_init_residual: bool, init: str) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if init == "arcface_torch":
                    nn.init.normal_(m.weight, 0.0, 0.1)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # arcface_torch keeps the embedding BN's scale at 1: only its shift is learned,
        # so the feature norm is not rescaled per dimension.
        self.features.weight.requires_grad_(False)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map, ``N x widths[-1] x ceil(H/16) x ceil(W/16)``."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.bn2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.forward_features(x), 1)
        return self.features(self.fc(self.dropout(x)))


ARCH_LAYERS = {
    "ir18": (2, 2, 2, 2),
    "ir34": (3, 4, 6, 3),
    "ir50": (3, 4, 14, 3),
    "ir100": (3, 13, 30, 3),
    "ir200": (6, 26, 60, 6),
}
TINY_LAYERS = (1, 1, 1, 1)
TINY_WIDTHS = (16, 32, 64, 128)
