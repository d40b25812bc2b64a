"""Privacy-preserving recognition and template protection, trained and attacked alike.

One registry (``PROTECTIONS``) of protection methods, each a recognizer that the project's
trainer (``model.protection`` in a ``recognition`` config), checkpoints and evaluation use
like any backbone:

=================== ============================================================ ===========
name                what the server sees                                         stages
=================== ============================================================ ===========
duetface            162 high-frequency block-DCT channels (client keeps 30)      client, then server
partialface         27 channels: a permuted random subset of the 162 not pruned  one
dctdp               189 AC channels plus learned-budget Laplace noise            one
minusface           decoded, channel-shuffled residue of image minus regeneration residue, then FR
slerpface           protected templates (slerp toward a key, group dropout)      one
=================== ============================================================ ===========

Modules: ``bdct`` (the block-DCT front end), one module per method, ``attacks`` (visual,
reconstruction, template inversion, cross-key matching), ``benchmark`` (train every method
on one shard set, verify on the world's protocols, attack, write one table), ``config``
(the ``privacy`` config kind). Names are imported lazily so the CLI stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PROTECTIONS": "synthface.recognition.privacy.methods",
    "ProtectedRecognizer": "synthface.recognition.privacy._base",
    "create_protected": "synthface.recognition.privacy.methods",
    "rebuild_protected": "synthface.recognition.privacy.methods",
    "list_protections": "synthface.recognition.privacy.methods",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'synthface.recognition.privacy' has no attribute {name!r}")
