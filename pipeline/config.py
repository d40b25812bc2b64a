"""Typed configs: pydantic models that reject unknown keys, loaded from YAML.

Every stage declares its config as a :class:`StrictModel`. Config *kinds*
(``recognition``, ``generators``, ``generate`` …) are discovered through the
``synthface.configs`` entry-point group, so this bottom layer never imports the stages
that define them. A file says its kind in a top-level ``kind:`` key (``config show``
writes it); the name of its folder (``configs/<kind>/``) is only the fallback.
Relative paths in a loaded file are resolved as ``synthface.pipeline.paths`` says.

Validation errors become one line that names the file, the field path, what was
expected and what was found, e.g.
``configs/generate/x.yaml: line 3: generator.steps: must be > 0 (got -3)``; a value
given with ``--set`` is blamed on the override, not the file.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import entry_points
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from synthface.pipeline.errors import ConfigError
from synthface.pipeline.limits import quote
from synthface.pipeline.paths import config_source, resolve_paths

M = TypeVar("M", bound=BaseModel)
ENTRY_POINT_GROUP = "synthface.configs"
KIND_KEY = "kind"


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments re-validate.

    Scalars are not coerced across kinds: ``true`` for a count, ``"3"`` for a number or
    ``1`` for a flag are errors (pydantic's lax mode would read them as 1, 3 and true).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_scalar_coercion(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None or isinstance(value, dict | list | tuple) or value is None:
            return value
        kinds = _scalar_kinds(field.annotation)
        if not kinds or object in kinds:
            return value
        if isinstance(value, bool):
            if bool not in kinds:
                raise ValueError(f"must be {_kind_names(kinds)}, not a boolean")
        elif isinstance(value, int | float):
            if not kinds & {int, float}:
                raise ValueError(f"must be {_kind_names(kinds)}, not a number")
        elif isinstance(value, str) and str not in kinds:
            raise ValueError(f"must be {_kind_names(kinds)}, not a string")
        return value


def _scalar_kinds(annotation: Any) -> frozenset:
    """The scalar types a field accepts ({object} when anything non-scalar is allowed)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _scalar_kinds(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return frozenset().union(*(_scalar_kinds(a) for a in get_args(annotation)))
    if origin is Literal:
        return frozenset(type(v) for v in get_args(annotation))
    if annotation is type(None):
        return frozenset()
    if annotation in (bool, int, float, str):
        return frozenset({annotation})
    return frozenset({object})


def _kind_names(kinds: frozenset) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if float in kinds:
        kinds = kinds - {int}
    return " or ".join(names[k] for k in (bool, int, float, str) if k in kinds)


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
        return f"must be one of {quote(ctx['expected'], 200)}"
    if kind == "enum" and "expected" in ctx:
        return f"must be one of {quote(ctx['expected'], 200)}"
    msg = str(err.get("msg", kind))
    msg = msg.removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    return msg if len(msg) <= 200 else msg[:200] + "..."


def _override_paths(overrides: list[str] | None) -> dict[tuple[str, ...], str]:
    return {tuple(o.split("=", 1)[0].split(".")): o for o in overrides or [] if "=" in o}


def format_validation_error(
    exc: ValidationError,
    source: str,
    model: type[BaseModel],
    *,
    overrides: list[str] | None = None,
    lines: dict[tuple[str, ...], int] | None = None,
    override_label: str = "--set",
) -> str:
    """All problems of one validation, one line each, prefixed by where the value came from:
    ``--set KEY=VALUE`` for an overridden key, else ``source`` (with the line when known).
    """
    by_override = _override_paths(overrides)
    out = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        path = ".".join(loc) or "<root>"
        where = source
        for n in range(len(loc), 0, -1):
            if loc[:n] in by_override:
                where = f"{override_label} {quote(by_override[loc[:n]])[1:-1]}"
                break
            if lines and loc[:n] in lines:
                where = f"{source}: line {lines[loc[:n]]}"
                break
        text = f"{where}: {path}: {_describe(err, model)}"
        if err["type"] != "missing" and "input" in err:
            got = err["input"]
            if not isinstance(got, dict):
                text += f" (got {quote(got)})"
        out.append(text)
    return "\n".join(out)


def validate_config(
    data: Any,
    model: type[M],
    source: str = "<config>",
    *,
    overrides: list[str] | None = None,
    lines: dict[tuple[str, ...], int] | None = None,
    override_label: str = "--set",
) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message = format_validation_error(
            exc, source, model, overrides=overrides, lines=lines, override_label=override_label
        )
        raise ConfigError(message) from None


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.safe_load`` minus what a config never needs and an attacker can abuse.

    Aliases are refused (``*a`` expanding to ``&a`` is how a 1 KB "billion laughs"
    file becomes gigabytes); duplicate keys are refused (YAML keeps the last silently).
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(
                event.start_mark,
                f"alias *{event.anchor}: aliases are not allowed in configs (write the value out)",
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in first:
                raise _Refused(
                    key_node.start_mark,
                    f"duplicate key {quote(key)} (first at line {first[key]})",
                )
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


class _Refused(Exception):
    def __init__(self, mark, problem: str):
        super().__init__(problem)
        self.mark, self.problem = mark, problem


def _key_lines(node, path: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    """The line of every mapping key / sequence item, by its path (for error messages)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            sub = (*path, str(key_node.value))
            out[sub] = key_node.start_mark.line + 1
            _key_lines(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = (*path, str(i))
            out[sub] = item.start_mark.line + 1
            _key_lines(item, sub, out)


def parse_yaml(text: str, source: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    """``(data, key lines)`` of a config text; ``ConfigError`` with ``source:line`` if refused."""
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[tuple[str, ...], int] = {}
        _key_lines(node, (), lines)
        data = loader.construct_document(node) if node is not None else None
    except _Refused as exc:
        raise ConfigError(f"{source}: line {exc.mark.line + 1}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}:{where} invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    return data, lines


def read_yaml(path: str | Path, *, with_lines: bool = False) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    data, lines = parse_yaml(text, str(path))
    data = {} if data is None else data
    return (data, lines) if with_lines else data


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict."""
    for item in overrides or []:
        shown = f"--set {quote(item)[1:-1]}"
        if "=" not in item:
            raise ConfigError(f"{shown}: expected KEY.PATH=VALUE")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{shown}: {part} is not a section")
            node = nxt
        node[parts[-1]] = parse_yaml(raw, shown)[0]
    return data


def load_config(path: str | Path, model: type[M], overrides: list[str] | None = None) -> M:
    """Read ``path`` (a file or ``synthface:KIND/NAME.yaml``) as YAML, validate it as ``model``.

    A ``kind:`` key must name ``model``'s kind. Relative input paths resolve against the
    file's folder (those given in ``overrides`` against the current directory), relative
    output paths against ``synthface.pipeline.paths.home()``. Errors name the ``--set``
    override or the file and line a bad value came from.
    """
    source = config_source(path)
    data, lines = read_yaml(source, with_lines=True)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping (got {type(data).__name__})")
    declared = data.pop(KIND_KEY, None)
    expected = kind_of_model(model)
    if declared is not None and expected is not None and declared != expected:
        raise ConfigError(
            f"{path}: {KIND_KEY}: {quote(declared)}, but this command reads {expected!r} configs"
        )
    data = apply_overrides(data, overrides)
    cfg = validate_config(data, model, str(path), overrides=overrides, lines=lines)
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
