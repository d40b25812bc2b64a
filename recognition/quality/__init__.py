"""Face image quality without human labels: SDD-FIQA (Ou et al., CVPR 2021).

``pseudo_labels`` scores every sample of a labelled identity set by how far its genuine
similarities lie from its impostor similarities (Wasserstein distance); a regressor
(``QualityRegressor``, a registered backbone + regression head) learns to predict that
from the image alone; ``QualityScorer`` applies it, e.g. in generation QC
(``qc.quality_model``, ``qc.min_quality``). Names are exported lazily (torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "pseudo_labels": "synthface.recognition.quality.pseudo_labels",
    "wasserstein_1d": "synthface.recognition.quality.pseudo_labels",
    "QualityRegressor": "synthface.recognition.quality.model",
    "QualityScorer": "synthface.recognition.quality.model",
    "build_quality_model": "synthface.recognition.quality.model",
    "load_quality_model": "synthface.recognition.quality.model",
    "save_quality_model": "synthface.recognition.quality.model",
    "train_quality": "synthface.recognition.quality.train",
    "label_dataset": "synthface.recognition.quality.datasets",
    "score_dataset": "synthface.recognition.quality.datasets",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'synthface.recognition.quality' has no attribute {name!r}")
