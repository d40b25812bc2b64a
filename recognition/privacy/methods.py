"""The registry with every method imported, so each protection is registered once looked up."""

from __future__ import annotations

from synthface.recognition.privacy import dctdp, duetface, minusface, partialface, slerpface
from synthface.recognition.privacy._base import (
    PROTECTIONS,
    ProtectedRecognizer,
    create_protected,
    rebuild_protected,
)

__all__ = [
    "PROTECTIONS",
    "ProtectedRecognizer",
    "create_protected",
    "dctdp",
    "duetface",
    "list_protections",
    "minusface",
    "partialface",
    "rebuild_protected",
    "slerpface",
]


def list_protections() -> list[str]:
    return PROTECTIONS.names()
