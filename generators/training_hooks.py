"""What a generator adds to the shared training loop, as class hooks.

:mod:`synthface.generators.training` runs one loop for every registered generator and
asks the class for the parts that differ: its denoiser, the conditions of a training
batch, and files fitted on the data before the first step (``extra_files``: stored in
every checkpoint, read back on loading). The defaults are the ID³/plain behaviour; the
hooks are class methods because the loop calls them before any generator exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from synthface.generators.config import GeneratorConfig
from synthface.generators.denoiser import ConditionalDenoiser


class TrainingHooks:
    """The training-side hooks of :class:`DiffusionGenerator` (defaults = ID³/plain)."""

    extra_files: ClassVar[tuple[str, ...]] = ()
    extras: Mapping[str, bytes]

    @classmethod
    def build_denoiser(cls, config: GeneratorConfig) -> torch.nn.Module:
        """The trainable network of this generator (a hook for training and loading)."""
        return ConditionalDenoiser(config)

    @classmethod
    def training_batch(cls, samples: Sequence[dict[str, Any]], config: GeneratorConfig, encoder):
        from synthface.generators.training import make_batch  # training imports the base

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
