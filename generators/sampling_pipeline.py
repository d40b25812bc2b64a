"""Conditions in, images out: the sampling half of :class:`DiffusionGenerator`.

Kept apart from the training hooks and the checkpoint I/O so that a reader of the
sampling path (dataset production, benchmarks) finds it whole in one place. The
denoising loop itself is :mod:`synthface.generators.sampling`; this module turns user
conditions into condition tokens, runs that loop batch by batch (``sample_batch``, the
hook UIFace replaces with its two-stage sampler) and decodes the result to uint8.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import ValidationError

from synthface.generators.config import GeneratorConfig
from synthface.generators.sampling import sample
from synthface.pipeline.errors import ConfigError, InputError


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images in [-1, 1] (N, 3, H, W) -> uint8 (N, H, W, 3) RGB."""
    return ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class SamplingPipeline:
    """``generate`` and the sampler hooks; the state is set by ``DiffusionGenerator``."""

    name: ClassVar[str]
    uses_identity_guidance: ClassVar[bool]
    config: GeneratorConfig
    device: torch.device
    denoiser: Any
    autoencoder: Any
    encoder: Any
    attribute_prior: Any

    # ----------------------------------------------------------------- conditions
    @property
    def attribute_names(self) -> list[str]:
        return [a.name for a in self.config.conditioning.attributes]

    def _attribute_scales(self) -> torch.Tensor:
        return torch.tensor([a.scale for a in self.config.conditioning.attributes])

    def default_attributes(self, n: int) -> np.ndarray:
        if self.attribute_prior is not None:
            return np.tile(self.attribute_prior.mean().astype(np.float32), (n, 1))
        return np.zeros((n, len(self.attribute_names)), dtype=np.float32)

    def _condition_tensors(
        self, identity_conditions, attribute_conditions
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        ident = torch.as_tensor(np.ascontiguousarray(identity_conditions, dtype=np.float32))
        if ident.ndim == 1:
            ident = ident.unsqueeze(0)
        attrs = None
        if self.attribute_names:
            if attribute_conditions is None:
                attribute_conditions = self.default_attributes(ident.shape[0])
            attrs = torch.as_tensor(np.ascontiguousarray(attribute_conditions, dtype=np.float32))
            if attrs.ndim == 1:
                attrs = attrs.unsqueeze(0)
        self.denoiser.cond.check(ident, attrs)
        if attrs is not None:
            attrs = attrs / self._attribute_scales()
        return ident.to(self.device), None if attrs is None else attrs.to(self.device)

    # ----------------------------------------------------------------- sampling
    def identity_score(self, targets: torch.Tensor):
        """x0_hat -> cos(f(decode(x0_hat)), y) per sample, for identity guidance."""
        enc = self.encoder
        if enc is None or not getattr(enc, "differentiable", False):
            raise ConfigError(
                "identity guidance needs a differentiable identity encoder (a recognizer "
                "checkpoint or .onnx file: encoder.path or --encoder); set "
                "sampler.id_guidance_scale: 0 to sample without"
            )
        y = torch.nn.functional.normalize(targets.float(), dim=1)

        def score(x0_hat: torch.Tensor) -> torch.Tensor:
            img = self.autoencoder.decode(x0_hat)
            return (enc(img) * y).sum(dim=1)

        return score

    @torch.no_grad()
    def generate(
        self,
        identity_conditions,
        attribute_conditions=None,
        seeds: Sequence[int] | None = None,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        id_guidance_scale: float | None = None,
        batch_size: int | None = None,
        precision: str = "fp32",
        batched_cfg: bool = True,
        return_float: bool = False,
        sampler_options: dict | None = None,
        sample_meta: list[dict] | None = None,
    ) -> np.ndarray:
        """Images for N conditions: uint8 (N, H, W, 3) RGB (or float [-1, 1] NCHW).

        Each image depends only on its own (identity, attributes, seed); ``batch_size``
        only changes speed and memory. ``sampler_options`` are generator-specific sampler
        switches (UIFace: ``two_stage``, ``injection``, ...); a generator without any
        refuses them. ``sample_meta``, when given, is extended with one dict per image of
        what the sampler decided for it (UIFace: its switch timestep), for the shard meta.
        """
        ident, attrs = self._condition_tensors(identity_conditions, attribute_conditions)
        n = ident.shape[0]
        seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != n:
            raise InputError(f"{len(seeds)} seeds for {n} identity conditions")
        sc = self.config.sampler.model_copy()
        for key, val in (
            ("name", sampler),
            ("steps", steps),
            ("guidance_scale", guidance_scale),
            ("id_guidance_scale", id_guidance_scale),
            ("batch_size", batch_size),
        ):
            if val is not None:
                try:
                    setattr(sc, key, val)
                except ValidationError as exc:
                    arg = "sampler" if key == "name" else key
                    raise InputError(f"generate: {arg}={val!r}: {exc.errors()[0]['msg']}") from None
        if not self.uses_identity_guidance:
            sc.id_guidance_scale = 0.0
        if sc.id_guidance_scale > 0:
            self.identity_score(ident[:1])  # fail before any work if there is no encoder
        options = self.sampler_options(sampler_options or {})
        outs = []
        for s in range(0, n, sc.batch_size):
            sl = slice(s, s + sc.batch_size)
            tokens = self.denoiser.cond(ident[sl], None if attrs is None else attrs[sl])
            score = self.identity_score(ident[sl]) if sc.id_guidance_scale > 0 else None
            z, metas = self.sample_batch(
                tokens,
                seeds[sl],
                sc,
                identity_score=score,
                precision=precision,
                batched_cfg=batched_cfg,
                options=options,
            )
            if sample_meta is not None:
                sample_meta.extend(metas)
            img = self.autoencoder.decode_images(z, precision=precision)
            outs.append(img)
        images = torch.cat(outs)
        if return_float:
            return images.numpy()
        return to_uint8(images)

    @classmethod
    def validate_sampler_options(cls, config: GeneratorConfig, options: dict):
        """Generator-specific sampler options, validated (the plain core has none)."""
        if options:
            raise InputError(
                f"generator {cls.name!r} takes no sampler options (got {sorted(options)})"
            )
        return None

    def sampler_options(self, options: dict):
        return self.validate_sampler_options(self.config, options)

    def sample_batch(
        self, tokens, seeds, sampler, *, identity_score, precision, batched_cfg, options
    ) -> tuple[torch.Tensor, list[dict]]:
        """One batch of x_0 in UNet space and one meta dict per sample (a sampler hook)."""
        cfg = self.config
        z = sample(
            self.denoiser,
            tokens,
            seeds,
            sampler=sampler,
            diffusion=cfg.diffusion,
            shape=(cfg.sample_channels, cfg.sample_size, cfg.sample_size),
            identity_score=identity_score,
            precision=precision,
            batched_cfg=batched_cfg,
            clip_x0=cfg.autoencoder.kind == "none",
        )
        return z, [{} for _ in seeds]
