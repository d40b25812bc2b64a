"""Diffusion face generators, samplers and identity anchors.

May import ``pipeline`` and ``recognition`` (the frozen identity encoder); never ``flows``.
Public names are loaded lazily so that importing the package (e.g. by the CLI) does not
pull in torch and diffusers.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "GeneratorConfig": "generators.config",
    "DiffusionGenerator": "generators.base",
    "GENERATORS": "generators.base",
    "create_generator": "generators.base",
    "load_generator": "generators.base",
    "ConditionalDenoiser": "generators.denoiser",
    "SCHEDULERS": "generators.sampling",
    "make_scheduler": "generators.sampling",
    "train_generator": "generators.training",
    "IdentityEncoder": "generators.encoder",
    "load_identity_encoder": "generators.encoder",
    "tammes_anchors": "generators.id3.anchors",
    "packing_stats": "generators.id3.anchors",
    "identity_conditions": "generators.id3.identities",
    "AttributePrior": "generators.id3.attributes",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'generators' has no attribute {name!r}")
