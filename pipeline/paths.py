"""Where the paths in a config point: inputs next to the config, outputs where the user is.

A config declares each path field as :data:`InputPath` (something the run reads: a
checkpoint, an encoder, a gallery, a data root) or :data:`OutputPath` (something it
writes: an output directory). When a config file is loaded (``load_config``):

* a relative **input** path resolves against the folder of the config file that holds it
  (the shipped configs included, so the embedded default finds the demo models both in
  a checkout and in an installed wheel); a value given on the command line (``--set``)
  or as a flow parameter resolves against the current directory instead;
* a relative **output** path resolves against :func:`home`: ``$SYNTHFACE_HOME`` when set,
  else the current directory — never the install location;
* ``~`` is the user's home and ``${SYNTHFACE_HOME}`` (or ``$SYNTHFACE_HOME``) is
  :func:`home` in either kind, so an input that an earlier step wrote where the user
  works reads e.g. ``${SYNTHFACE_HOME}/out/world/train``.

Resolved paths are absolute, so a resolved config means the same in any process and
any working directory (a deployment's runner, a Dask worker).

``synthface:KIND/NAME.yaml`` names a config shipped with the package (the folder
``configs/`` of the repository, the package data ``synthface.configs`` of a wheel).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from enum import Enum
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, StringConstraints

from synthface.pipeline.errors import ConfigError

HOME_ENV = "SYNTHFACE_HOME"
SHIPPED_PREFIX = "synthface:"
CONFIGS_PACKAGE = "synthface.configs"
DATA_PACKAGE = "synthface.data"


class PathRole(Enum):
    INPUT = "input"
    OUTPUT = "output"


_NonEmpty = StringConstraints(min_length=1)
InputPath = Annotated[str, _NonEmpty, PathRole.INPUT]
OutputPath = Annotated[str, _NonEmpty, PathRole.OUTPUT]


def home(env: Mapping[str, str] | None = None) -> Path:
    """Where relative outputs and Prefect's ``.prefect/`` go: ``$SYNTHFACE_HOME`` or the cwd."""
    value = (os.environ if env is None else env).get(HOME_ENV)
    if value:
        return Path(value).expanduser().absolute()
    return Path.cwd()


def package_dir(package: str) -> Path:
    """The folder of a data package (``synthface.configs``, ``synthface.data``).

    pip installs wheels unpacked, so package data is a real folder; relative paths
    between the configs and the demo models rely on that.
    """
    root = files(package)
    if not isinstance(root, Path):
        raise ConfigError(f"{package}: package data is not on the file system ({root})")
    return root


def shipped_configs() -> list[Path]:
    """Every config shipped with the package, sorted by ``KIND/NAME.yaml``."""
    root = package_dir(CONFIGS_PACKAGE)
    return sorted(root.glob("*/*.yaml"))


def shipped_ref(path: Path) -> str | None:
    """``synthface:KIND/NAME.yaml`` for a shipped config file, else ``None``."""
    root = package_dir(CONFIGS_PACKAGE).resolve()
    try:
        rel = Path(path).resolve().relative_to(root)
    except ValueError:
        return None
    return SHIPPED_PREFIX + rel.as_posix()


def config_source(ref: str | os.PathLike) -> Path:
    """The file a config reference names: a path, or ``synthface:KIND/NAME.yaml``."""
    text = os.fspath(ref)
    if not text.startswith(SHIPPED_PREFIX):
        return Path(text).expanduser()
    rel = text.removeprefix(SHIPPED_PREFIX)
    path = package_dir(CONFIGS_PACKAGE) / rel
    if ".." in Path(rel).parts or not path.is_file():
        known = ", ".join(shipped_ref(p) or str(p) for p in shipped_configs())
        raise ConfigError(f"{text}: no such shipped config (shipped: {known})")
    return path


def _expand(value: str) -> str:
    for token in ("${" + HOME_ENV + "}", "$" + HOME_ENV):
        if value == token or value.startswith(token + "/"):
            return str(home()) + value[len(token) :]
    return os.path.expanduser(value)


def resolve_path(value: str, role: PathRole, base: Path) -> str:
    """One path: expanded, then made absolute (inputs against ``base``, outputs against home).

    A shipped config reference (``synthface:KIND/NAME.yaml``) is left as it is: it names
    the same file from anywhere.
    """
    if role is PathRole.INPUT and value.startswith(SHIPPED_PREFIX):
        return value
    path = Path(_expand(value))
    if path.is_absolute():
        return str(path)
    anchor = base if role is PathRole.INPUT else home()
    return os.path.normpath(anchor.absolute() / path)


def _role(annotation: Any) -> PathRole | None:
    """The path role an annotation carries (``InputPath``, ``InputPath | None``, list of them)."""
    if get_origin(annotation) is Annotated:
        for meta in get_args(annotation)[1:]:
            if isinstance(meta, PathRole):
                return meta
        return _role(get_args(annotation)[0])
    if get_origin(annotation) in (Union, list, tuple) or type(annotation).__name__ == "UnionType":
        for arg in get_args(annotation):
            role = _role(arg)
            if role is not None:
                return role
    return None


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _submodels(arg)]


def _overridden(location: str, keys: Iterable[str]) -> bool:
    return any(location == k or location.startswith(k + ".") for k in keys)


def resolve_paths(cfg: BaseModel, base: str | os.PathLike, *, from_cwd: Iterable[str] = ()):
    """``cfg`` with every relative path made absolute (see the module docstring).

    ``from_cwd`` lists dotted keys (``--set`` overrides) whose inputs resolve against the
    current directory rather than ``base``. Path fields inside lists of sections (e.g. a
    benchmark's ``generators``) count too.
    """
    base, keys = Path(base), list(from_cwd)
    data = cfg.model_dump(mode="json")
    changed = False

    def walk(model: type[BaseModel], node: dict, prefix: str) -> None:
        nonlocal changed
        for name, field in model.model_fields.items():
            value = node.get(name)
            if value is None:
                continue
            location = prefix + name
            role = next((m for m in field.metadata if isinstance(m, PathRole)), None)
            role = role or _role(field.annotation)
            if role is not None:
                anchor = Path.cwd() if _overridden(location, keys) else base
                if isinstance(value, list):
                    new = [resolve_path(v, role, anchor) for v in value]
                else:
                    new = resolve_path(value, role, anchor)
                if new != value:
                    node[name] = new
                    changed = True
                continue
            subs = _submodels(field.annotation)
            if not subs:
                continue
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    walk(subs[0], item, location + ".")

    walk(type(cfg), data, "")
    if not changed:
        return cfg
    out = type(cfg).model_validate(data)
    _keep_fields_set(out, cfg)
    return out


def _keep_fields_set(new: BaseModel, old: BaseModel) -> None:
    """Give ``new`` (rebuilt from a full dump) the set fields of ``old``, recursively.

    Without it every default would count as stated by the file, and a check that takes a
    value from elsewhere unless the config states it (a loaded autoencoder's geometry)
    would refuse configs that never mentioned it.
    """
    object.__setattr__(new, "__pydantic_fields_set__", set(old.model_fields_set))
    for name in type(old).model_fields:
        a, b = getattr(old, name, None), getattr(new, name, None)
        if isinstance(a, BaseModel) and isinstance(b, BaseModel):
            _keep_fields_set(b, a)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for x, y in zip(a, b, strict=True):
                if isinstance(x, BaseModel) and isinstance(y, BaseModel):
                    _keep_fields_set(y, x)
