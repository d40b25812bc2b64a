"""Diffusion face generators, samplers and identity anchors.

May import ``pipeline`` and ``recognition`` (the frozen identity encoder); never ``flows``.
Public names are loaded lazily so that importing the package (e.g. by the CLI) does not
pull in torch and diffusers.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "GeneratorConfig": "synthface.generators.config",
    "DiffusionGenerator": "synthface.generators.base",
    "GENERATORS": "synthface.generators.base",
    "create_generator": "synthface.generators.base",
    "load_generator": "synthface.generators.base",
    "ConditionalDenoiser": "synthface.generators.denoiser",
    "SCHEDULERS": "synthface.generators.sampling",
    "make_scheduler": "synthface.generators.sampling",
    "train_generator": "synthface.generators.training",
    "IdentityEncoder": "synthface.generators.encoder",
    "load_identity_encoder": "synthface.generators.encoder",
    "tammes_anchors": "synthface.generators.id3.anchors",
    "packing_stats": "synthface.generators.id3.anchors",
    "identity_conditions": "synthface.generators.id3.identities",
    "AttributePrior": "synthface.generators.id3.attributes",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'generators' has no attribute {name!r}")
