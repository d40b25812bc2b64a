"""Face recognizers: backbones, margin heads, training, evaluation, FRCSyn, privacy modules.

May import ``pipeline``; never ``generators`` or ``flows``.

The public model API is re-exported lazily, so ``import synthface.recognition`` (done by the CLI
for every command) does not import torch:

``create_backbone``, ``create_head``, ``HeadOutput``, ``save_recognizer``,
``load_recognizer``, ``load_weights``, ``load_embedder``, ``Embedder``, ``export_onnx``,
``onnx_to_torch`` and ``load_recognizer_module`` (checkpoint or ONNX -> frozen torch module).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "create_backbone": "synthface.recognition.backbones",
    "list_backbones": "synthface.recognition.backbones",
    "create_head": "synthface.recognition.heads",
    "list_heads": "synthface.recognition.heads",
    "HeadOutput": "synthface.recognition.heads",
    "save_recognizer": "synthface.recognition.checkpoint",
    "load_recognizer": "synthface.recognition.checkpoint",
    "load_weights": "synthface.recognition.checkpoint",
    "load_embedder": "synthface.recognition.embedder",
    "Embedder": "synthface.recognition.embedder",
    "export_onnx": "synthface.recognition.export",
    "onnx_to_torch": "synthface.recognition.onnx_torch",
    "load_recognizer_module": "synthface.recognition.onnx_torch",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recognition' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
