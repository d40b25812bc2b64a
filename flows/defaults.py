"""The embedded default config and where Prefect keeps its state.

With no ``PREFECT_API_URL``, Prefect starts a temporary ("ephemeral") API server on
SQLite in ``$PREFECT_HOME``. Entry points (``synthface flows ...``, ``python -m
synthface.flows.demo``) call :func:`prepare_prefect_env` before importing Prefect so that
this database lives in ``.prefect/`` under ``$SYNTHFACE_HOME`` or the current directory
(where the user works, never the install location) rather than the user's
``~/.prefect``, and so that an unreachable server is reported in one line naming
``PREFECT_API_URL``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from synthface.generators.dataset.config import GenerateConfig
from synthface.pipeline.config import load_config
from synthface.pipeline.errors import ConfigError, InputError
from synthface.pipeline.paths import SHIPPED_PREFIX, home, resolve_paths

M = TypeVar("M", bound=BaseModel)

# The embedded default: configs/generate/default.yaml, package data of synthface.configs.
DEFAULT_CONFIG_REF = SHIPPED_PREFIX + "generate/default.yaml"
# A fresh PREFECT_HOME runs the database migrations on first start: give it time.
EPHEMERAL_STARTUP_TIMEOUT = "120"


def load_generate_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> GenerateConfig:
    """A ``generate`` config file (default: the embedded one), its paths made absolute.

    Relative inputs resolve against the file's folder, outputs against
    ``$SYNTHFACE_HOME`` or the current directory (``synthface.pipeline.paths``).
    """
    return load_config(path or DEFAULT_CONFIG_REF, GenerateConfig, overrides)


def load_default_config() -> GenerateConfig:
    return load_generate_config(None)


def flow_config(model: type[M], config: M | None, config_file: str | None, flow: str) -> M | None:
    """A flow's config from its ``config`` or ``config_file`` parameter (not both).

    A file is loaded as ``load_config`` does; a config passed as a value has its relative
    paths resolved against the run's working directory (inputs) and home (outputs).
    """
    if config is not None and config_file is not None:
        raise ConfigError(f"{flow} parameters: give config or config_file, not both")
    if config_file is not None:
        return load_config(config_file, model)
    return None if config is None else resolve_paths(config, Path.cwd())


def prepare_prefect_env(env: dict | None = None) -> str | None:
    """Point Prefect at ``.prefect/`` where the user works (ephemeral mode) or check the server.

    Returns the API URL in use, or ``None`` for the ephemeral API.
    """
    env = os.environ if env is None else env
    url = env.get("PREFECT_API_URL")
    if url:
        check_prefect_api(url)
        return url
    env.setdefault("PREFECT_HOME", str(home(env) / ".prefect"))
    # Prefect creates neither PREFECT_HOME nor its parents before opening the SQLite file in it:
    # a $SYNTHFACE_HOME that does not exist yet would end in minutes of server tracebacks.
    prefect_home = Path(env["PREFECT_HOME"]).expanduser()
    try:
        prefect_home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"PREFECT_HOME={prefect_home}: cannot create Prefect's state folder ({exc.strerror or exc}); "
            "set SYNTHFACE_HOME or PREFECT_HOME to a writable folder"
        ) from None
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT)
    return None


def check_prefect_api(url: str, timeout: float = 5.0) -> None:
    """One-line error when the server at ``PREFECT_API_URL`` does not answer its health check."""
    import httpx

    try:
        resp = httpx.get(url.rstrip("/") + "/health", timeout=timeout)
        resp.raise_for_status()
    except (httpx.HTTPError, ValueError) as exc:
        raise InputError(
            f"Prefect server unreachable at PREFECT_API_URL={url} ({type(exc).__name__}: {exc}); "
            "start it with `prefect server start` or unset PREFECT_API_URL to run on the "
            "ephemeral API"
        ) from None
