"""DuetFace (ACM MM 2022): low frequencies stay on the client, the server sees the rest.

Split (reference ``SUB_CHS``): frequencies ``8u + v`` in {0, 1, 2, 3, 4, 5, 8, 9, 16, 24}
of each of Y, Cb, Cr (30 channels) go to the **client**, a MobileFaceNet pre-trained alone
and then frozen; the other 162 go to the **server**, an iResNet. At the end of each of the
server's four stages an *interactive block* lets the client's activations (MobileFaceNet
body blocks 1, 3, 5, 7, at the same strides) steer the server's features:

1. ``e`` = 1x1 conv of the client feature (client -> server channels), bilinearly resized
   to the server map; **a learned layer of the model here** (the reference builds it anew
   inside every forward, so it is never trained);
2. ``M`` = per-sample min-max of the channel mean of ``e``;
3. ``M`` = per-sample min-max of ``M`` times the facial region of interest (``roi.py``);
4. ``out = sigmoid(h) * M * w + sigmoid(h)``, ``h`` the server map, ``w`` a learned scalar
   initialised to 0.

Training: stage 1 trains the client alone (``duetface_client``) with the same recipe;
stage 2 (``duetface``) loads it (``client_checkpoint``), freezes it and trains the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from synthface.pipeline.errors import ConfigError
from synthface.recognition.backbones import IResNet, MobileFaceNet
from synthface.recognition.privacy import bdct
from synthface.recognition.privacy._base import (
    PROTECTIONS,
    InputNorm,
    PretrainStage,
    ProtectedRecognizer,
    bdct_size,
    build_server,
)
from synthface.recognition.privacy.roi import ARCFACE_LANDMARKS, roi_mask

CLIENT_FREQS = (0, 1, 2, 3, 4, 5, 8, 9, 16, 24)
CLIENT_CHANNELS = tuple(bdct.all_colours(CLIENT_FREQS))  # 30
SERVER_CHANNELS = tuple(bdct.complement(CLIENT_CHANNELS))  # 162
CLIENT_TAPS = (1, 3, 5, 7)  # MobileFaceNet body blocks whose outputs feed the 4 blocks


@PROTECTIONS.register("duetface_client")
class DuetFaceClient(ProtectedRecognizer):
    """Stage 1: the client network alone on the 30 low-frequency channels."""

    def __init__(
        self,
        *,
        backbone: str = "mobilefacenet",
        backbone_params: dict[str, Any] | None = None,
        input_size: int | Sequence[int] = 112,
        embedding_dim: int = 512,
        upsample: int = 8,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(input_size=input_size, embedding_dim=embedding_dim, eval_seed=eval_seed)
        self.upsample = upsample
        side = bdct_size(self.size, upsample)
        self.register_buffer("channels", torch.tensor(CLIENT_CHANNELS), persistent=False)
        self.norm = InputNorm(len(CLIENT_CHANNELS))
        self.net = build_server(
            backbone,
            dict(backbone_params or {}),
            channels=len(CLIENT_CHANNELS),
            size=side,
            embedding_dim=embedding_dim,
        )
        if not isinstance(self.net, MobileFaceNet):
            raise ConfigError(
                f"duetface client: backbone {backbone!r} is not a MobileFaceNet (the "
                "interactive blocks tap its body blocks 1, 3, 5, 7)"
            )

    def low(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(bdct.to_bdct(x, self.upsample)[:, self.channels])

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations of the body blocks the interactive blocks read."""
        out, h = [], self.low(x)
        for i, block in enumerate(self.net.body):
            h = block(h)
            if i in CLIENT_TAPS:
                out.append(h)
            if i == CLIENT_TAPS[-1]:
                break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.low(x))

    def server_view(self, x, generator=None):  # the client model sends nothing
        raise NotImplementedError("duetface_client is the client half; it has no server view")


class Interaction(nn.Module):
    """One interactive block (steps 1-4 of the module docstring)."""

    def __init__(self, client_channels: int, server_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(client_channels, server_channels, 1)
        self.weight = nn.Parameter(torch.zeros(()))

    @staticmethod
    def _minmax(m: torch.Tensor) -> torch.Tensor:
        flat = m.flatten(1)
        lo = flat.min(1).values.view(-1, 1, 1, 1)
        hi = flat.max(1).values.view(-1, 1, 1, 1)
        return (m - lo) / (hi - lo).clamp_min(1e-6)

    def mask(self, h: torch.Tensor, client: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        e = F.interpolate(
            self.proj(client), size=h.shape[-2:], mode="bilinear", align_corners=False
        )
        m = self._minmax(e.mean(1, keepdim=True))
        r = F.interpolate(roi[None, None], size=h.shape[-2:], mode="bilinear", align_corners=False)
        return self._minmax(m * r)

    def forward(self, h: torch.Tensor, client: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(h)
        return s * self.mask(h, client, roi) * self.weight + s


@PROTECTIONS.register("duetface")
class DuetFace(ProtectedRecognizer):
    """Stage 2: frozen client + iResNet server on the 162 remaining channels.

    Args:
        backbone: the server, an iResNet (``tiny``, ``ir18``, ``ir50`` ...).
        client_backbone, client_params: the client (a MobileFaceNet) as in stage 1.
        client_checkpoint: the stage-1 model directory (init only).
        roi_landmarks: 5 x 2 landmark positions as fractions of the side (default: the
            arcface alignment template).
        roi_scale: enlargement of their hull about its centroid.
        upsample: block-DCT up-sampling factor (``bdct.py``).
    """

    init_only = ("client_checkpoint",)

    def __init__(
        self,
        *,
        backbone: str = "ir18",
        backbone_params: dict[str, Any] | None = None,
        input_size: int | Sequence[int] = 112,
        embedding_dim: int = 512,
        client_backbone: str = "mobilefacenet",
        client_params: dict[str, Any] | None = None,
        client_checkpoint: str | None = None,
        roi_landmarks: Sequence[Sequence[float]] | None = None,
        roi_scale: float = 1.5,
        upsample: int = 8,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(input_size=input_size, embedding_dim=embedding_dim, eval_seed=eval_seed)
        self.upsample = upsample
        side = bdct_size(self.size, upsample)
        self.client = DuetFaceClient(
            backbone=client_backbone,
            backbone_params=client_params,
            input_size=input_size,
            embedding_dim=embedding_dim,
            upsample=upsample,
        )
        if client_checkpoint is not None:
            self._load_client(client_checkpoint)
        self.freeze(self.client)
        self.register_buffer("channels", torch.tensor(SERVER_CHANNELS), persistent=False)
        self.norm = InputNorm(len(SERVER_CHANNELS))
        self.server = build_server(
            backbone,
            dict(backbone_params or {}),
            channels=len(SERVER_CHANNELS),
            size=side,
            embedding_dim=embedding_dim,
        )
        if not isinstance(self.server, IResNet):
            raise ConfigError(f"duetface server: backbone {backbone!r} is not an iResNet")
        widths = [getattr(self.server, f"layer{i}")[-1].bn3.num_features for i in range(1, 5)]
        taps = [self.client.net.body[i] for i in CLIENT_TAPS]
        client_widths = [_out_channels(t) for t in taps]
        self.interactions = nn.ModuleList(Interaction(c, s) for c, s in zip(client_widths, widths))
        marks = roi_landmarks if roi_landmarks is not None else ARCFACE_LANDMARKS
        self.register_buffer("roi", torch.from_numpy(roi_mask(marks, side, roi_scale)))

    def _load_client(self, path: str) -> None:
        from synthface.recognition.checkpoint import load_recognizer

        stage1 = load_recognizer(Path(path))
        if not isinstance(stage1, DuetFaceClient):
            raise ConfigError(f"client_checkpoint {path}: not a duetface_client model")
        try:
            self.client.load_state_dict(stage1.state_dict(), strict=True)
        except RuntimeError as exc:
            raise ConfigError(
                f"client_checkpoint {path}: does not fit client_backbone/client_params "
                f"({str(exc).splitlines()[0]})"
            ) from None

    @classmethod
    def pretrain_stage(cls, backbone, backbone_params, params):
        return PretrainStage(
            protection="duetface_client",
            argument="client_checkpoint",
            backbone=params.get("client_backbone", "mobilefacenet"),
            backbone_params=dict(params.get("client_params") or {}),
            params={"upsample": params.get("upsample", 8)},
        )

    def frozen_modules(self) -> list[nn.Module]:
        return [self.client]

    def server_view(self, x, generator=None):
        return bdct.to_bdct(x, self.upsample)[:, self.channels]

    def visual(self, x, generator=None):
        full = bdct.scatter_channels(self.server_view(x), SERVER_CHANNELS)
        return bdct.from_bdct(full)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            taps = self.client.taps(x)
        s = self.server
        h = s.prelu(s.bn1(s.conv1(self.norm(self.server_view(x)))))
        for i, inter in enumerate(self.interactions, start=1):
            h = inter(getattr(s, f"layer{i}")(h), taps[i - 1], self.roi)
        h = torch.flatten(s.bn2(h), 1)
        return s.features(s.fc(s.dropout(h)))


def _out_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels
