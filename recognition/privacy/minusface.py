"""MinusFace (CVPR 2024): recognise the residue of an image minus its own regeneration.

Notation: ``e`` = block-DCT (192 channels), ``d`` = its inverse, back to the input size.

1. ``X_up = e(X)``; a generator ``G`` (a U-Net, 192 -> 192 channels) regenerates it:
   ``X'_up = G(X_up)``.
2. Residue ``R_up = X_up - X'_up`` ("feature subtraction").
3. **Stage 1** (``minusface_residue``): ``f = FR(R_up)`` (FR input conv 192 -> width); loss
   ``5 * L1(X, d(X'_up)) + margin loss`` (the reference writes ``2 d(.) - 1`` because its
   ``d`` returns [0, 1]; ours returns [-1, 1]). The KL sparsity term has weight 0 in the paper
   and is left out.
4. **Stage 2** (``minusface``): ``G`` is loaded from stage 1 and frozen; the 192 channels of
   ``R_up`` are shuffled by an independent random permutation per sample and decoded,
   ``X_p = d(shuffle(R_up))``, ``n_dup`` such copies (each its own permutation) are
   concatenated and a new FR (input conv ``3 * n_dup``) trains on them. The server sees
   ``X_p``.

The generator is scaled to small inputs by its widths (reference: 4 down / 4 up stages of
64..1024 channels at 112 px).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from synthface.pipeline.errors import ConfigError
from synthface.recognition.privacy import bdct
from synthface.recognition.privacy._base import (
    PROTECTIONS,
    InputNorm,
    PretrainStage,
    ProtectedRecognizer,
    bdct_size,
    build_server,
)
from synthface.recognition.privacy.nets import UNet

COEFF_SCALE = 128.0  # G sees and returns coefficients / 128 (a DC value reaches +-1024)


class Regenerator(nn.Module):
    """``G``: block-DCT maps -> their regeneration, through a U-Net on scaled coefficients."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        self.net = UNet(bdct.CHANNELS, bdct.CHANNELS, widths)

    def forward(self, coeff: torch.Tensor) -> torch.Tensor:
        return self.net(coeff / COEFF_SCALE) * COEFF_SCALE


@PROTECTIONS.register("minusface_residue")
class MinusFaceResidue(ProtectedRecognizer):
    """Stage 1: generator and a recognizer on the 192-channel residue, trained together.

    Args:
        generator_widths: U-Net widths of ``G``, finest first.
        recon_weight: factor of the L1 regeneration term (reference 5.0).
        generator_lr_scale: learning-rate factor of ``G`` (the reference README suggests 0.1).
    """

    def __init__(
        self,
        *,
        backbone: str = "ir18",
        backbone_params: dict[str, Any] | None = None,
        input_size: int | Sequence[int] = 112,
        embedding_dim: int = 512,
        generator_widths: Sequence[int] = (64, 128, 256, 512, 1024),
        recon_weight: float = 5.0,
        generator_lr_scale: float = 1.0,
        upsample: int = 8,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(input_size=input_size, embedding_dim=embedding_dim, eval_seed=eval_seed)
        if recon_weight < 0 or generator_lr_scale <= 0:
            raise ValueError(
                f"recon_weight must be >= 0 and generator_lr_scale > 0 "
                f"(got {recon_weight}, {generator_lr_scale})"
            )
        self.upsample = upsample
        self.recon_weight, self.generator_lr_scale = float(recon_weight), float(generator_lr_scale)
        side = bdct_size(self.size, upsample)
        self.generator_net = Regenerator(generator_widths)
        self.norm = InputNorm(bdct.CHANNELS)
        self.server = build_server(
            backbone,
            dict(backbone_params or {}),
            channels=bdct.CHANNELS,
            size=side,
            embedding_dim=embedding_dim,
        )

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(regeneration X'_up, residue R_up)."""
        coeff = bdct.to_bdct(x, self.upsample)
        regen = self.generator_net(coeff)
        return regen, coeff - regen

    def server_view(self, x, generator=None):
        return self.split(x)[1]

    def visual(self, x, generator=None):
        return bdct.from_bdct(self.server_view(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.server(self.norm(self.server_view(x)))

    def forward_train(self, x, labels):
        regen, residue = self.split(x)
        recon = F.l1_loss(bdct.from_bdct(regen, output_size=self.size), x.float())
        return self.server(self.norm(residue)), self.recon_weight * recon

    def lr_scales(self) -> dict[str, float]:
        return {"generator_net": self.generator_lr_scale}


@PROTECTIONS.register("minusface")
class MinusFace(ProtectedRecognizer):
    """Stage 2: frozen ``G`` from stage 1, recognizer on decoded shuffled residues.

    Args:
        residue_checkpoint: the stage-1 model directory (init only).
        generator_widths: must equal stage 1's.
        n_dup: shuffled copies concatenated as the server's input (reference 1).
    """

    init_only = ("residue_checkpoint",)

    def __init__(
        self,
        *,
        backbone: str = "ir18",
        backbone_params: dict[str, Any] | None = None,
        input_size: int | Sequence[int] = 112,
        embedding_dim: int = 512,
        residue_checkpoint: str | None = None,
        generator_widths: Sequence[int] = (64, 128, 256, 512, 1024),
        n_dup: int = 1,
        upsample: int = 8,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(input_size=input_size, embedding_dim=embedding_dim, eval_seed=eval_seed)
        if not isinstance(n_dup, int) or n_dup < 1:
            raise ValueError(f"n_dup must be a positive integer, got {n_dup!r}")
        self.upsample, self.n_dup = upsample, n_dup
        bdct_size(self.size, upsample)
        self.generator_net = Regenerator(generator_widths)
        if residue_checkpoint is not None:
            self._load_generator(residue_checkpoint)
        self.freeze(self.generator_net)
        self.norm = InputNorm(3 * n_dup)
        self.server = build_server(
            backbone,
            dict(backbone_params or {}),
            channels=3 * n_dup,
            size=self.size,
            embedding_dim=embedding_dim,
        )

    def _load_generator(self, path: str) -> None:
        from synthface.recognition.checkpoint import load_recognizer

        stage1 = load_recognizer(Path(path))
        if not isinstance(stage1, MinusFaceResidue):
            raise ConfigError(f"residue_checkpoint {path}: not a minusface_residue model")
        try:
            self.generator_net.load_state_dict(stage1.generator_net.state_dict(), strict=True)
        except RuntimeError as exc:
            raise ConfigError(
                f"residue_checkpoint {path}: generator_widths differ from stage 1 "
                f"({str(exc).splitlines()[0]})"
            ) from None

    @classmethod
    def pretrain_stage(cls, backbone, backbone_params, params):
        keep = {k: params[k] for k in ("generator_widths", "upsample") if k in params}
        for k in ("recon_weight", "generator_lr_scale"):
            if k in params:
                raise ConfigError(
                    f"minusface: {k} belongs to the first stage; give it under pretrain_params"
                )
        return PretrainStage(
            protection="minusface_residue",
            argument="residue_checkpoint",
            backbone=backbone,
            backbone_params=dict(backbone_params),
            params=keep,
        )

    def frozen_modules(self) -> list[nn.Module]:
        return [self.generator_net]

    def server_view(self, x, generator=None):
        if generator is None:
            generator = self.generator(x.device)
        with torch.no_grad():
            coeff = bdct.to_bdct(x, self.upsample)
            residue = coeff - self.generator_net(coeff)
        copies = []
        for _ in range(self.n_dup):
            keys = torch.rand(residue.shape[:2], generator=generator, device=residue.device)
            perm = keys.argsort(dim=1)
            shuffled = residue.gather(1, perm[:, :, None, None].expand_as(residue))
            copies.append(bdct.from_bdct(shuffled, output_size=self.size))
        return torch.cat(copies, dim=1)

    def visual(self, x, generator=None):
        return self.server_view(x, generator)[:, :3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.server(self.norm(self.server_view(x)))
