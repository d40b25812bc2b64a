"""Deployments of the flows, served by one long-lived process (``prefect.serve``).

Each ``configs/generate/*.yaml`` becomes ``generate-synthetic/<name>`` whose default
parameters hold the whole resolved config, with its ``schedule`` (cron or interval)
attached. A run triggered with ``prefect deployment run generate-synthetic/<name>
--param identities=100`` is validated against the flow's parameter schema by the server
(``enforce_parameter_schema``), so a bad value fails at once and names the field.
"""

from __future__ import annotations

from pathlib import Path

from synthface.pipeline.errors import ConfigError
from synthface.pipeline.generate_plan import GenerateConfig


def generate_deployment(cfg: GenerateConfig, *, schedules: bool = True):
    from prefect.deployments.runner import EntrypointType

    from synthface.flows.generate import generate_synthetic

    kwargs: dict = {}
    if schedules and cfg.schedule.cron:
        from prefect.schedules import Cron

        kwargs["schedules"] = [Cron(cfg.schedule.cron, timezone=cfg.schedule.timezone)]
    elif schedules and cfg.schedule.interval_seconds:
        kwargs["interval"] = cfg.schedule.interval_seconds
    return generate_synthetic.to_deployment(
        name=cfg.name,
        parameters={"config": cfg.model_dump(mode="json")},
        description=f"generate-synthetic with the {cfg.name!r} config into {cfg.output.dir}",
        tags=["synthface", "generate"],
        enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH,
        **kwargs,
    )


def config_files(paths: list[str] | None) -> list[Path]:
    """The given files, or every ``configs/generate/*.yaml`` of the project."""
    from synthface.flows.defaults import DEFAULT_CONFIG

    if paths:
        return [Path(p) for p in paths]
    return sorted(DEFAULT_CONFIG.parent.glob("*.yaml"))


def build_deployments(paths: list[str] | None = None, *, schedules: bool = True) -> list:
    from synthface.flows.defaults import DEFAULT_CONFIG, load_generate_config

    deployments, names = [], {}
    for path in config_files(paths):
        default = path.resolve() == DEFAULT_CONFIG.resolve()
        cfg = load_generate_config(None if default else path)
        if cfg.name in names:
            raise ConfigError(
                f"{path}: name: {cfg.name!r} is also used by {names[cfg.name]} "
                "(deployment names must be unique)"
            )
        names[cfg.name] = path
        deployments.append(generate_deployment(cfg, schedules=schedules))
    if not deployments:
        raise ConfigError("no generate configs to serve")
    return deployments


def training_deployment(path: str | Path):
    """``train-recognizer/<stem>``, ``train-generator/<stem>`` or ``privacy-benchmark/<stem>``
    for a config file.

    The kind comes from the file's folder (``configs/recognition``, ``configs/generators``,
    ``configs/privacy``), as for ``synthface config validate``.
    """
    from prefect.deployments.runner import EntrypointType

    from synthface.flows.privacy import privacy_benchmark
    from synthface.flows.training import train_generator, train_recognizer
    from synthface.pipeline.config import infer_kind, load_any_config

    kind = infer_kind(path)
    flows = {
        "recognition": train_recognizer,
        "generators": train_generator,
        "privacy": privacy_benchmark,
    }
    if kind not in flows:
        raise ConfigError(
            f"{path}: training deployments take configs/recognition/*.yaml, "
            f"configs/generators/*.yaml or configs/privacy/*.yaml (folder {kind!r})"
        )
    cfg = load_any_config(path, kind)
    return flows[kind].to_deployment(
        name=Path(path).stem,
        parameters={"config": cfg.model_dump(mode="json")},
        tags=["synthface", "privacy" if kind == "privacy" else "train"],
        enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_deployments(
    paths: list[str] | None = None,
    *,
    train_paths: list[str] | None = None,
    schedules: bool = True,
    limit: int | None = None,
) -> None:
    """Register the deployments and execute their runs until interrupted."""
    from prefect import serve

    deployments = build_deployments(paths, schedules=schedules)
    deployments += [training_deployment(p) for p in train_paths or []]
    serve(*deployments, limit=limit)
