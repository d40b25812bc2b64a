"""Typed configs: pydantic models that reject unknown keys, loaded from YAML.

Every stage declares its config as a :class:`StrictModel`. Config *kinds*
(``recognition``, ``generators``, ``generate`` …) are discovered through the
``synthface.configs`` entry-point group, so this bottom layer never imports the stages
that define them. A file says its kind in a top-level ``kind:`` key (``config show``
writes it); the name of its folder (``configs/<kind>/``) is only the fallback.
Relative paths in a loaded file are resolved as ``synthface.pipeline.paths`` says.

Validation errors become one line that names the file, the field path, what was
expected and what was found, e.g.
``configs/generate/x.yaml: generator.steps: must be > 0 (got -3)``.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from synthface.pipeline.errors import ConfigError
from synthface.pipeline.paths import config_source, resolve_paths

M = TypeVar("M", bound=BaseModel)
ENTRY_POINT_GROUP = "synthface.configs"
KIND_KEY = "kind"


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments re-validate."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    for name, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if kind.startswith(("greater_than", "less_than")) and name in ctx:
            return f"must be {op} {ctx[name]}"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "literal_error" and "expected" in ctx:
        return f"must be one of {ctx['expected']}"
    if kind == "enum" and "expected" in ctx:
        return f"must be one of {ctx['expected']}"
    msg = str(err.get("msg", kind))
    msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def format_validation_error(exc: ValidationError, source: str, model: type[BaseModel]) -> str:
    """All problems of one validation, one line each, prefixed by the source file."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        text = f"{source}: {path}: {_describe(err, model)}"
        if err["type"] != "missing" and "input" in err:
            got = err["input"]
            if not isinstance(got, dict):
                text += f" (got {got!r})" if isinstance(got, str) else f" (got {got})"
        lines.append(text)
    return "\n".join(lines)


def validate_config(data: Any, model: type[M], source: str = "<config>") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, model)) from None


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    return {} if data is None else data


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = nxt
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path, model: type[M], overrides: list[str] | None = None) -> M:
    """Read ``path`` (a file or ``synthface:KIND/NAME.yaml``) as YAML, validate it as ``model``.

    A ``kind:`` key must name ``model``'s kind. Relative input paths resolve against the
    file's folder (those given in ``overrides`` against the current directory), relative
    output paths against ``synthface.pipeline.paths.home()``.
    """
    source = config_source(path)
    data = read_yaml(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping (got {type(data).__name__})")
    declared = data.pop(KIND_KEY, None)
    expected = kind_of_model(model)
    if declared is not None and expected is not None and declared != expected:
        raise ConfigError(
            f"{path}: {KIND_KEY}: {declared!r}, but this command reads {expected!r} configs"
        )
    cfg = validate_config(apply_overrides(data, overrides), model, str(path))
    keys = [item.split("=", 1)[0] for item in overrides or []]
    return resolve_paths(cfg, source.absolute().parent, from_cwd=keys)


def config_kinds() -> dict[str, Any]:
    """Config kind name -> entry point (loaded lazily)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def model_for_kind(kind: str) -> type[BaseModel]:
    kinds = config_kinds()
    if kind not in kinds:
        known = ", ".join(sorted(kinds)) or "none"
        raise ConfigError(f"unknown config kind {kind!r} (known: {known})")
    return kinds[kind].load()


def kind_of_model(model: type[BaseModel]) -> str | None:
    """The kind name under which ``model`` is registered, if any."""
    target = f"{model.__module__}:{model.__qualname__}"
    return next((ep.name for ep in config_kinds().values() if ep.value == target), None)


def infer_kind(path: str | Path) -> str:
    """A file's config kind: its ``kind:`` key, else the name of the folder that holds it."""
    source = config_source(path)
    data = read_yaml(source)
    known = sorted(config_kinds())
    declared = data.get(KIND_KEY) if isinstance(data, dict) else None
    if declared is not None:
        if declared not in known:
            raise ConfigError(
                f"{path}: {KIND_KEY}: unknown config kind {declared!r} (known: {', '.join(known)})"
            )
        return declared
    folder = source.absolute().parent.name
    if folder not in known:
        raise ConfigError(
            f"{path}: no {KIND_KEY}: key and folder {folder!r} is no config kind; add "
            f"`{KIND_KEY}: ...` to the file or pass --kind (known: {', '.join(known)})"
        )
    return folder


def load_any_config(
    path: str | Path, kind: str | None = None, overrides: list[str] | None = None
) -> BaseModel:
    """Load a config of any kind (``kind``, else the file's ``kind:`` key, else its folder)."""
    return load_config(path, model_for_kind(kind or infer_kind(path)), overrides)


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: BaseModel | dict[str, Any]) -> str:
    """sha256 of the resolved config (defaults included) in canonical JSON."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()
