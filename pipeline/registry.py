"""One registry idiom for backbones, heads, generators and samplers (after timm).

A decorator files a constructor under a snake_case name; ``create`` builds it and
reports unknown names together with the known ones, so a typo in a config is a
one-line error rather than a ``KeyError`` deep inside a run.

A registry may also know its built-in entries by module path (``builtins``): the module
is imported the first time its name is asked for. That keeps the registry complete
without every caller remembering to import the modules that fill it, and without the
module defining the registry importing its subclasses (they import it: a cycle).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from synthface.pipeline.errors import ConfigError

T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-.]*$")


class Registry(Generic[T]):
    """Named constructors of one kind of component.

    ``builtins`` maps a built-in name to the module whose decorator registers it.
    """

    def __init__(self, kind: str, builtins: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._builtins: dict[str, str] = dict(builtins or {})
        for key in self._builtins:
            self._check_name(key)

    def _check_name(self, key: str) -> None:
        if not _NAME.match(key):
            raise ValueError(f"{self.kind} name {key!r} must be lower-case snake_case")

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: file ``fn`` under ``name`` (default: its ``__name__``)."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            self._check_name(key)
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            home = self._builtins.get(key)
            if home is not None and getattr(fn, "__module__", None) != home:
                # Otherwise whichever of the two is imported first would win silently.
                raise ValueError(f"{self.kind} {key!r} is a built-in name (of {home})")
            self._entries[key] = fn
            return fn

        return deco

    def _load(self, name: str) -> None:
        """Import the module of built-in ``name`` unless its entry is already there."""
        if name in self._entries or name not in self._builtins:
            return
        module = self._builtins[name]
        importlib.import_module(module)
        if name not in self._entries:
            raise RuntimeError(f"{module} was imported but did not register {self.kind} {name!r}")

    def get(self, name: str) -> Callable[..., T]:
        self._load(name)
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build ``name``; keyword arguments set to ``None`` are dropped so defaults win."""
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def names(self) -> list[str]:
        """Registered and built-in names (listing imports nothing; ``get`` does)."""
        return sorted(set(self._entries) | set(self._builtins))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._builtins
