"""The one generator interface the flows use, and the generator registry.

``generate(identity_conditions, attribute_conditions, seeds) -> uint8 NHWC images``:
identity conditions are (N, D) embeddings on the recognizer's hypersphere, attribute
conditions (N, A) raw values in the units of ``meta["attributes"]`` (years, degrees),
one integer seed per image. Every registered generator is a :class:`DiffusionGenerator`
that differs in how it is trained and guided; ``create_generator`` builds one from a
config and ``load_generator`` rebuilds one from a ``save_pretrained`` directory.

A generator is composed of three parts, each with one home: sampling
(:mod:`~synthface.generators.sampling_pipeline`), training hooks
(:mod:`~synthface.generators.training_hooks`) and checkpoint I/O
(:mod:`~synthface.generators.pretrained`). This module holds what ties them together:
the state they share, the dataset-conditions contract and the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from synthface.generators.autoencoder import Autoencoder, build_autoencoder
from synthface.generators.checkpoint import read_generator_config
from synthface.generators.config import GeneratorConfig
from synthface.generators.denoiser import ConditionalDenoiser
from synthface.generators.id3.attributes import AttributePrior
from synthface.generators.pretrained import PretrainedIO
from synthface.generators.sampling_pipeline import SamplingPipeline, to_uint8
from synthface.generators.training_hooks import TrainingHooks
from synthface.pipeline.errors import ConfigError
from synthface.pipeline.registry import Registry

__all__ = [
    "GENERATORS",
    "DiffusionGenerator",
    "create_generator",
    "load_generator",
    "to_uint8",
]

# The built-ins are imported on first use, so no caller has to remember to import them
# and this module need not import its subclasses (which import it).
GENERATORS: Registry = Registry(
    "generator",
    builtins={
        "id3": "synthface.generators.id3.generator",
        "plain": "synthface.generators.plain",
        "uiface": "synthface.generators.uiface.generator",
        "morphface": "synthface.generators.morphface.generator",
    },
)


class DiffusionGenerator(SamplingPipeline, TrainingHooks, PretrainedIO):
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

    def dataset_conditions(
        self,
        anchors: np.ndarray,
        per_identity: int,
        *,
        seed: int = 0,
        first_identity: int = 0,
    ) -> dict[str, np.ndarray]:
        """Conditions of ``per_identity`` images for each of N identity anchors (N, D).

        Returns ``identity`` (N, m, D), ``cos`` (N, m), ``attributes`` (N, m, A) in raw
        units and ``seeds`` (N, m). Row ``i`` is identity ``first_identity + i`` and must
        depend only on that number and ``seed``, so that any shard can be produced alone.
        How a generator varies the images of one identity is its own choice, hence no
        default here.
        """
        raise ConfigError(
            f"generator {self.name!r} cannot sample dataset conditions "
            f"({type(self).__name__} does not implement dataset_conditions)"
        )


def create_generator(
    name: str, config: GeneratorConfig | None = None, **kwargs
) -> DiffusionGenerator:
    """Build a registered generator; ``config.generator`` is set to ``name``."""
    cls = GENERATORS.get(name)
    cfg = (config or GeneratorConfig()).model_copy(update={"generator": name})
    return cls(cfg, **kwargs)


def load_generator(path: str | Path, *, encoder=None, device="cpu") -> DiffusionGenerator:
    """Rebuild the right registered generator class from a checkpoint directory."""
    cfg = read_generator_config(path)
    return GENERATORS.get(cfg.generator).from_pretrained(path, encoder=encoder, device=device)
