"""The one generator interface the flows use, and the generator registry.

``generate(identity_conditions, attribute_conditions, seeds) -> uint8 NHWC images``:
identity conditions are (N, D) embeddings on the recognizer's hypersphere, attribute
conditions (N, A) raw values in the units of ``meta["attributes"]`` (years, degrees),
one integer seed per image. Every registered generator is a :class:`DiffusionGenerator`
that differs in how it is trained and guided; ``create_generator`` builds one from a
config and ``load_generator`` rebuilds one from a ``save_pretrained`` directory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from synthface.generators.autoencoder import Autoencoder, build_autoencoder
from synthface.generators.checkpoint import (
    generator_config_json,
    load_weights,
    read_generator_config,
    save_tensors,
)
from synthface.generators.config import GeneratorConfig
from synthface.generators.denoiser import ConditionalDenoiser
from synthface.generators.id3.attributes import AttributePrior
from synthface.generators.sampling import sample
from synthface.pipeline.atomic import atomic_dir, atomic_write_bytes, atomic_write_json
from synthface.pipeline.errors import ConfigError, InputError
from synthface.pipeline.registry import Registry

GENERATORS: Registry = Registry("generator")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float images in [-1, 1] (N, 3, H, W) -> uint8 (N, H, W, 3) RGB."""
    return ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class DiffusionGenerator:
    """A conditional diffusion generator (denoiser + optional autoencoder and encoder)."""

    name = "diffusion"
    uses_identity_loss = True
    uses_identity_guidance = True

    def __init__(
        self,
        config: GeneratorConfig,
        *,
        denoiser: ConditionalDenoiser | None = None,
        autoencoder: Autoencoder | None = None,
        encoder=None,
        attribute_prior: AttributePrior | None = None,
        extras: Mapping[str, bytes] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.denoiser = (denoiser or self.build_denoiser(config)).to(self.device).eval()
        self.autoencoder = (autoencoder or build_autoencoder(config.autoencoder)).to(self.device)
        self.encoder = encoder.to(self.device) if hasattr(encoder, "to") else encoder
        self.attribute_prior = attribute_prior
        self.extras = dict(extras or {})

    # ----------------------------------------------------------------- hooks
    # What a generator adds to the shared core: its denoiser, the conditions of a training
    # batch, and files fitted on the data before training (``extra_files``, stored in every
    # checkpoint). training.py calls these; the defaults are the ID³/plain behaviour.
    extra_files: tuple[str, ...] = ()

    @classmethod
    def build_denoiser(cls, config: GeneratorConfig) -> torch.nn.Module:
        """The trainable network of this generator (a hook for training and loading)."""
        return ConditionalDenoiser(config)

    @classmethod
    def training_batch(cls, samples: Sequence[dict[str, Any]], config: GeneratorConfig, encoder):
        from synthface.generators.training import make_batch

        return make_batch(samples, config, encoder)

    @classmethod
    def fit_extras(cls, config: GeneratorConfig, data) -> dict[str, bytes]:
        """Files fitted on the training data before the first step (name -> bytes)."""
        return {}

    @classmethod
    def read_extras(cls, path: str | Path) -> dict[str, bytes]:
        path = Path(path)
        return {n: (path / n).read_bytes() for n in cls.extra_files if (path / n).is_file()}

    def extra_payloads(self) -> dict[str, bytes]:
        return dict(self.extras)

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
            img = self.autoencoder.decode(z).float().clamp(-1, 1).cpu()
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

    # ----------------------------------------------------------------- persistence
    def save_pretrained(self, path: str | Path, provenance: dict | None = None) -> Path:
        """Write the generator directory atomically (replacing an existing one)."""
        final = Path(path)
        with atomic_dir(final) as tmp:
            atomic_write_json(tmp / "config.json", generator_config_json(self.config, provenance))
            save_tensors(
                tmp / "model.safetensors",
                self.denoiser.state_dict(),
                metadata={"format": "synthface-generator", "generator": self.config.generator},
            )
            if self.attribute_prior is not None:
                atomic_write_json(tmp / "attribute_prior.json", self.attribute_prior.to_dict())
            for name, payload in self.extra_payloads().items():
                atomic_write_bytes(tmp / name, payload)
            if self.autoencoder.model is not None:
                self.autoencoder.model.save_pretrained(tmp / "autoencoder", safe_serialization=True)
        return final

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        encoder=None,
        device: str | torch.device = "cpu",
        config: GeneratorConfig | None = None,
    ) -> DiffusionGenerator:
        """Rebuild from ``save_pretrained`` output; ``config`` forces an architecture."""
        path = Path(path)
        cfg = config or read_generator_config(path)
        denoiser = cls.build_denoiser(cfg)
        load_weights(denoiser, path / "model.safetensors")
        ae_dir = path / "autoencoder"
        autoencoder = build_autoencoder(cfg.autoencoder, ae_dir if ae_dir.is_dir() else None)
        prior = None
        if (path / "attribute_prior.json").is_file():
            prior = AttributePrior.from_dict(
                json.loads((path / "attribute_prior.json").read_text())
            )
        return cls(
            cfg,
            denoiser=denoiser,
            autoencoder=autoencoder,
            encoder=encoder,
            attribute_prior=prior,
            extras=cls.read_extras(path),
            device=device,
        )


def _register_builtin() -> None:
    """Import the modules whose decorators fill :data:`GENERATORS` (idempotent)."""
    import synthface.generators.id3.generator
    import synthface.generators.morphface.generator
    import synthface.generators.plain
    import synthface.generators.uiface.generator  # noqa: F401


def create_generator(
    name: str, config: GeneratorConfig | None = None, **kwargs
) -> DiffusionGenerator:
    """Build a registered generator; ``config.generator`` is set to ``name``."""
    _register_builtin()
    cls = GENERATORS.get(name)
    cfg = (config or GeneratorConfig()).model_copy(update={"generator": name})
    return cls(cfg, **kwargs)


def load_generator(path: str | Path, *, encoder=None, device="cpu") -> DiffusionGenerator:
    """Rebuild the right registered generator class from a checkpoint directory."""
    _register_builtin()
    cfg = read_generator_config(path)
    return GENERATORS.get(cfg.generator).from_pretrained(path, encoder=encoder, device=device)
