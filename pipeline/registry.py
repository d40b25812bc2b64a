"""One registry idiom for backbones, heads, generators and samplers (after timm).

A decorator files a constructor under a snake_case name; ``create`` builds it and
reports unknown names together with the known ones, so a typo in a config is a
one-line error rather than a ``KeyError`` deep inside a run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from synthface.pipeline.errors import ConfigError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-.]*$")


class Registry(Generic[T]):
    """Named constructors of one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: file ``fn`` under ``name`` (default: its ``__name__``)."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if not _NAME.match(key):
                raise ValueError(f"{self.kind} name {key!r} must be lower-case snake_case")
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build ``name``; keyword arguments set to ``None`` are dropped so defaults win."""
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
