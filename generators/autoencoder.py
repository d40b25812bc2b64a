"""Pixel or latent space, chosen by config: a thin adapter over diffusers autoencoders.

``kind: none`` is the identity (small images are diffused in pixel space); ``kl`` wraps
``AutoencoderKL`` and ``vq`` wraps ``VQModel`` (the UIFace/IDiff-Face VQ-f4 family) for
112-128 px images. The adapter scales latents by ``scaling_factor`` so the UNet sees
roughly unit-variance inputs; the autoencoder itself is always frozen.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from synthface.generators.config import AutoencoderConfig
from synthface.pipeline.errors import InputError


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig, model: nn.Module | None = None) -> None:
        super().__init__()
        self.kind = cfg.kind
        self.scaling_factor = cfg.scaling_factor
        self.model = model
        if model is not None:
            model.requires_grad_(False)
            model.eval()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (N,3,H,W) -> UNet inputs."""
        if self.model is None:
            return images
        if self.kind == "kl":
            z = self.model.encode(images).latent_dist.mode()
        else:
            z = self.model.encode(images).latents
        return z * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """UNet space -> images in about [-1, 1]; differentiable (identity loss, guidance)."""
        if self.model is None:
            return latents
        return self.model.decode(latents / self.scaling_factor).sample


def build_autoencoder(cfg: AutoencoderConfig, path: str | Path | None = None) -> Autoencoder:
    """Build (or load from ``path`` / ``cfg.path``) the frozen autoencoder."""
    if cfg.kind == "none":
        return Autoencoder(cfg, None)
    from diffusers import AutoencoderKL, VQModel

    cls = AutoencoderKL if cfg.kind == "kl" else VQModel
    src = path or cfg.path
    if src is not None:
        src = Path(src)
        if not (src / "config.json").is_file():
            raise InputError(f"{src}: not a diffusers autoencoder directory (no config.json)")
        model = cls.from_pretrained(src, use_safetensors=True)
        lat = model.config.latent_channels
        if cfg.kind == "vq" and getattr(model.config, "vq_embed_dim", None):
            lat = model.config.vq_embed_dim
        if lat != cfg.latent_channels:
            raise InputError(
                f"{src}: autoencoder has {lat} latent channels, config says {cfg.latent_channels}"
            )
        return Autoencoder(cfg, model)
    blocks = len(cfg.block_out_channels)
    common = dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=cfg.latent_channels,
        norm_num_groups=min(32, min(cfg.block_out_channels)),
    )
    model = AutoencoderKL(**common) if cfg.kind == "kl" else VQModel(**common)
    return Autoencoder(cfg, model)
