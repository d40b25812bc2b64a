"""A generator directory: ``save_pretrained`` writes it, ``from_pretrained`` reads it back.

The one place that decides which files a generator checkpoint holds (the file formats
themselves are :mod:`synthface.generators.checkpoint`): ``config.json``,
``model.safetensors``, an optional ``attribute_prior.json``, the class's ``extra_files``
and an optional ``autoencoder/``. Loading goes through the class's ``build_denoiser`` and
``read_extras`` hooks, so every registered generator loads with this code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import torch

from synthface.generators.autoencoder import build_autoencoder
from synthface.generators.checkpoint import (
    generator_config_json,
    load_weights,
    read_generator_config,
    save_tensors,
)
from synthface.generators.config import GeneratorConfig
from synthface.generators.id3.attributes import AttributePrior
from synthface.pipeline.atomic import atomic_dir, atomic_write_bytes, atomic_write_json


class PretrainedIO:
    """Checkpoint I/O of :class:`DiffusionGenerator`; the state is set by its ``__init__``."""

    config: GeneratorConfig
    denoiser: Any
    autoencoder: Any
    attribute_prior: AttributePrior | None

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
    ) -> Self:
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
