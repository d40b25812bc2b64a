"""Margin-head registry: ``create_head("arcface", embedding_dim=512, num_classes=C)``.

Every head owns the class centres and maps ``(embeddings, labels)`` to a
:class:`HeadOutput` (loss, logits, targets). Registered names and defaults:

============== ================================================ ===================
name           target logit (c = cos theta_y)                   defaults
============== ================================================ ===================
arcface        s * cos(theta + m)                               s=64, m=0.5
cosface        s * (c - m)                                      s=64, m=0.35
combined       s * (cos(m1*theta + m2) - m3)                    s=64, (1, 0.3, 0.2)
curricularface ArcFace target, hard negatives c_j*(t + c_j)     s=64, m=0.5, alpha=0.01
cifp           CosFace target minus instance-FP penalty          s=64, m=0.35
============== ================================================ ===================

All take ``sample_rate`` (Partial FC, 1.0 = every class) and ``scale``.
"""

from __future__ import annotations

from typing import Any

from synthface.pipeline.errors import ConfigError
from synthface.pipeline.registry import Registry
from synthface.recognition.heads._base import HeadOutput, MarginHead, sample_classes
from synthface.recognition.heads.cifp import CIFPHead
from synthface.recognition.heads.curricularface import CurricularFaceHead
from synthface.recognition.heads.margins import ArcFaceHead, CombinedMarginHead, CosFaceHead

__all__ = [
    "HEADS",
    "ArcFaceHead",
    "CIFPHead",
    "CombinedMarginHead",
    "CosFaceHead",
    "CurricularFaceHead",
    "HeadOutput",
    "MarginHead",
    "create_head",
    "list_heads",
    "sample_classes",
]

HEADS: Registry[MarginHead] = Registry("head")
HEADS.register("arcface")(ArcFaceHead)
HEADS.register("cosface")(CosFaceHead)
HEADS.register("combined")(CombinedMarginHead)
HEADS.register("curricularface")(CurricularFaceHead)
HEADS.register("cifp")(CIFPHead)


def create_head(name: str, *, embedding_dim: int, num_classes: int, **kwargs: Any) -> MarginHead:
    """Build a registered head.

    Raises:
        ConfigError: unknown name (lists the known ones), unknown argument or bad value.
    """
    cls = HEADS.get(name)
    try:
        return cls(embedding_dim, num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"head {name!r}: {exc}") from None


def list_heads() -> list[str]:
    return HEADS.names()
