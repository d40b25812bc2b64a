"""The embedded default: the bundled config and a project-local Prefect home.

With no ``PREFECT_API_URL``, Prefect starts a temporary ("ephemeral") API server on
SQLite in ``$PREFECT_HOME``. Entry points (``synthface flows ...``, ``python -m
synthface.flows.demo``) call :func:`prepare_prefect_env` before importing Prefect so that this
database lives in the project's ``.prefect/`` rather than the user's ``~/.prefect``, and
so that an unreachable server is reported in one line naming ``PREFECT_API_URL``.
"""

from __future__ import annotations

import os
from pathlib import Path

from synthface.pipeline.config import load_config
from synthface.pipeline.errors import InputError
from synthface.pipeline.generate_plan import GenerateConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "generate" / "default.yaml"
# A fresh PREFECT_HOME runs the database migrations on first start: give it time.
EPHEMERAL_STARTUP_TIMEOUT = "120"


def resolve_paths(cfg: GenerateConfig, base: Path) -> GenerateConfig:
    """Make the config's relative paths absolute against ``base``.

    Deployments run in another process (and possibly another directory) than the one
    that registered them, so paths are fixed when a config is loaded, not when it runs.
    """

    def absolute(path: str | None) -> str | None:
        if path is None or Path(path).is_absolute():
            return path
        return str((base / path).resolve())

    data = cfg.model_dump(mode="json")
    for section, key in (
        ("generator", "checkpoint"),
        ("generator", "encoder"),
        ("output", "dir"),
        ("qc", "recognizer"),
        ("qc", "gallery"),
        ("qc", "quality_model"),
    ):
        data[section][key] = absolute(data[section][key])
    return GenerateConfig.model_validate(data)


def load_generate_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> GenerateConfig:
    """A ``generate`` config file (default: the embedded one), paths made absolute.

    Relative paths of the embedded default are relative to the project root; those of
    any other file to the current directory.
    """
    if path is None:
        return resolve_paths(load_config(DEFAULT_CONFIG, GenerateConfig, overrides), PROJECT_ROOT)
    return resolve_paths(load_config(path, GenerateConfig, overrides), Path.cwd())


def load_default_config() -> GenerateConfig:
    return load_generate_config(None)


def prepare_prefect_env(env: dict | None = None) -> str | None:
    """Point Prefect at the project-local home (ephemeral mode) or check the server.

    Returns the API URL in use, or ``None`` for the ephemeral API.
    """
    env = os.environ if env is None else env
    url = env.get("PREFECT_API_URL")
    if url:
        check_prefect_api(url)
        return url
    env.setdefault("PREFECT_HOME", str(PROJECT_ROOT / ".prefect"))
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
