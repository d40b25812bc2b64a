"""MobileFaceNet (Chen et al. 2018) in arcface_torch's ``mbf`` configuration.

Inverted-residual bottlenecks (1x1 expand, 3x3 depthwise, 1x1 linear project) and a
global depthwise conv (GDC) instead of global pooling: the last feature map is reduced
by a depthwise conv whose kernel equals its spatial size, so faces keep their spatial
weighting. ``scale`` multiplies the widths (arcface_torch ``mbf``: 2; the paper: 1).
The input is halved four times, so the GDC kernel is ``ceil(H/16) x ceil(W/16)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from synthface.recognition.backbones._base import Backbone, as_hw, check_positive, strided_size


class ConvBNAct(nn.Sequential):
    def __init__(
        self,
        cin: int,
        cout: int,
        k: int | tuple[int, int] = 1,
        s: int = 1,
        p: int = 0,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride=s, padding=p, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.PReLU(cout))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """1x1 expand to ``hidden`` -> 3x3 depthwise (stride ``s``) -> 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, hidden: int, s: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBNAct(cin, hidden, 1),
            ConvBNAct(hidden, hidden, 3, s, 1, groups=hidden),
            ConvBNAct(hidden, cout, 1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


def _stage(c: int, n: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(*[Bottleneck(c, c, hidden, 1, residual=True) for _ in range(n)])


class MobileFaceNet(Backbone):
    """Args:
    blocks: residual bottlenecks in the four stages (arcface_torch ``mbf``: 1, 4, 6, 2).
    scale: width multiplier (2 = arcface_torch ``mbf``, 4 = ``mbf_large``).
    input_size, input_channels, embedding_dim: as for every backbone.
    """

    def __init__(
        self,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        *,
        input_size: int | tuple[int, int] = 112,
        input_channels: int = 3,
        embedding_dim: int = 512,
    ) -> None:
        hw = as_hw(input_size)
        super().__init__(hw, input_channels, embedding_dim)
        if len(blocks) != 4:
            raise ValueError(f"MobileFaceNet needs 4 block counts, got {blocks}")
        for b in blocks:
            check_positive(int(b), "MobileFaceNet blocks entry")
        check_positive(scale, "scale")
        c1, c2 = 64 * scale, 128 * scale
        first = (
            ConvBNAct(c1, c1, 3, 1, 1, groups=c1) if blocks[0] == 1 else _stage(c1, blocks[0], 128)
        )
        self.body = nn.Sequential(
            ConvBNAct(input_channels, c1, 3, 2, 1),
            first,
            Bottleneck(c1, c1, 128, 2, residual=False),
            _stage(c1, blocks[1], 128),
            Bottleneck(c1, c2, 256, 2, residual=False),
            _stage(c2, blocks[2], 256),
            Bottleneck(c2, c2, 512, 2, residual=False),
            _stage(c2, blocks[3], 256),
            ConvBNAct(c2, 512, 1),
        )
        out_hw = tuple(strided_size(s, 4) for s in hw)
        self.feature_map = (512, *out_hw)
        self.gdc = ConvBNAct(512, 512, out_hw, groups=512, act=False)
        self.fc = nn.Linear(512, embedding_dim, bias=False)
        self.features = nn.BatchNorm1d(embedding_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.gdc(self.body(x)), 1)
        return self.features(self.fc(x))
