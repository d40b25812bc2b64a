"""Pixel or latent space, chosen by config: a thin adapter over diffusers autoencoders.

``kind: none`` is the identity (small images are diffused in pixel space); ``kl`` wraps
``AutoencoderKL`` and ``vq`` wraps ``VQModel`` (the UIFace/IDiff-Face VQ-f4 family) for
112-128 px images. The adapter scales latents by ``scaling_factor`` so the UNet sees
roughly unit-variance inputs; the autoencoder itself is always frozen.

A loaded autoencoder (``path``) decides its own geometry: latent channels, the
downsampling factor (one halving per ``block_out_channels`` level after the first) and
the scaling factor come from its ``config.json`` and are written into the config, so
the UNet is shaped for the model actually used. A config that states one of them
differently is refused in one line (a wrong value would train silently on the wrong
latent scale), as is a directory of the other autoencoder class. ``kl``
(``AutoencoderKL``, e.g. Stable Diffusion's VAE) samples its latent distribution
during training when given a generator and takes its mode otherwise.
"""

from __future__ import annotations

import json
import math
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
    def encode(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images in [-1, 1] (N,3,H,W) -> UNet inputs (a KL sample when ``generator`` is given)."""
        if self.model is None:
            return images
        if self.kind == "kl":
            dist = self.model.encode(images).latent_dist
            z = dist.mode() if generator is None else dist.sample(generator=generator)
        else:
            z = self.model.encode(images).latents
        return z * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """UNet space -> images in about [-1, 1]; differentiable (identity loss, guidance)."""
        if self.model is None:
            return latents
        return self.model.decode(latents / self.scaling_factor).sample

    @torch.no_grad()
    def decode_images(
        self, latents: torch.Tensor, *, precision: str = "fp32", chunk: int = 16
    ) -> torch.Tensor:
        """Sampled latents -> float images in [-1, 1] on the CPU, ``chunk`` at a time (the
        decoder's activations at full resolution dwarf the UNet's at latent size) and in
        the sampling precision (bf16 autocast on a GPU). Chunking changes no image: the
        decoder treats every image alone."""
        from synthface.generators.sampling import precision_context

        if self.model is None:
            return latents.float().clamp(-1, 1).cpu()
        out = []
        with precision_context(latents.device, precision):
            for s in range(0, latents.shape[0], chunk):
                out.append(self.decode(latents[s : s + chunk]).float().clamp(-1, 1).cpu())
        return torch.cat(out)


GEOMETRY = ("latent_channels", "block_out_channels", "scaling_factor")


def _check_class(src: Path, expected: str, kind: str) -> None:
    try:
        found = json.loads((src / "config.json").read_text()).get("_class_name")
    except FileNotFoundError:
        raise InputError(f"{src}: not a diffusers autoencoder directory (no config.json)") from None
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"{src}/config.json: unreadable ({exc})") from None
    if found != expected:
        raise InputError(
            f"{src}: its model class is {found or 'not named'}, but autoencoder.kind {kind!r} loads "
            f"{expected}; set autoencoder.kind to match the model"
        )


def model_geometry(kind: str, model_config) -> dict:
    """Latent channels, level widths and scaling factor of a diffusers autoencoder config."""
    lat = model_config.latent_channels
    if kind == "vq" and getattr(model_config, "vq_embed_dim", None):
        lat = model_config.vq_embed_dim
    return {
        "latent_channels": int(lat),
        "block_out_channels": [int(c) for c in model_config.block_out_channels],
        "scaling_factor": float(model_config.scaling_factor),
    }


def adopt_geometry(cfg: AutoencoderConfig, geometry: dict, src: Path | str) -> None:
    """Write the model's geometry into ``cfg``; a value the config states differently is an error."""
    for name in GEOMETRY:
        stated, actual = getattr(cfg, name), geometry[name]
        if name not in cfg.model_fields_set:
            continue
        same = (
            math.isclose(stated, actual, rel_tol=1e-6)
            if name == "scaling_factor"
            else stated == actual
        )
        if not same:
            extra = ""
            if name == "block_out_channels":
                extra = (
                    f" (downsampling x{2 ** (len(stated) - 1)}, the model's "
                    f"x{2 ** (len(actual) - 1)})"
                )
            raise InputError(
                f"{src}: autoencoder.{name} is {stated} in the config but {actual} in the model"
                f"{extra}; remove autoencoder.{name} from the config to take the model's"
            )
    for name in GEOMETRY:
        setattr(cfg, name, geometry[name])


def build_autoencoder(cfg: AutoencoderConfig, path: str | Path | None = None) -> Autoencoder:
    """Build (or load from ``path`` / ``cfg.path``) the frozen autoencoder."""
    if cfg.kind == "none":
        return Autoencoder(cfg, None)
    from diffusers import AutoencoderKL, VQModel

    cls = AutoencoderKL if cfg.kind == "kl" else VQModel
    src = path or cfg.path
    if src is not None:
        src = Path(src)
        if (src / "training" / "state.json").is_file():
            # its latent scale is measured only when final/ is exported: a generator
            # trained in this one's latents would use the placeholder 1.0
            raise InputError(
                f"autoencoder.path: {src} is a training checkpoint of "
                "`synthface generator train-autoencoder`, whose latent scale is not measured "
                f"yet; use the run's final/ ({src.parent.parent / 'final'})"
            )
        _check_class(src, cls.__name__, cfg.kind)
        model = cls.from_pretrained(src, use_safetensors=True)
        adopt_geometry(cfg, model_geometry(cfg.kind, model.config), src)
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
        scaling_factor=cfg.scaling_factor,  # saved with it: a reload must agree
    )
    model = AutoencoderKL(**common) if cfg.kind == "kl" else VQModel(**common)
    return Autoencoder(cfg, model)
