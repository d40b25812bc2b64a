"""The deployment table: the one source of ``synthface flows serve`` and ``prefect.yaml``.

Every deployable flow is one :class:`FlowEntry` in :data:`FLOWS`. Deployments are built
from it and from config files: each config of the entry's kind becomes
``<flow>/<name>`` (``name:`` in the file where the kind has one, else the file's stem)
whose only parameter is ``config_file``, the reference the flow loads the config from
when it runs, and whose schedule is the config's ``schedule`` section when the kind has
one (:class:`synthface.pipeline.schedule.DeploymentSchedule`). A flow without a config
kind gets one deployment, ``<flow>/on-demand``, whose runs pass every parameter.

``synthface flows serve`` registers these rows with ``prefect.serve``;
``synthface flows deployments --write-prefect-yaml`` writes the same rows as
``prefect.yaml`` for ``prefect deploy --all`` and a process work pool. Both use module
entrypoints (``synthface.flows.generate.generate_synthetic``), so neither depends on
where the package is installed, and the same names, parameters and schedules.

Adding a flow is one entry in :data:`FLOWS` (and, for a config kind, its configs under
``configs/<kind>/``); then regenerate ``prefect.yaml``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from synthface.pipeline.config import infer_kind, load_config, model_for_kind
from synthface.pipeline.errors import ConfigError
from synthface.pipeline.paths import SHIPPED_PREFIX, shipped_configs, shipped_ref
from synthface.pipeline.schedule import DeploymentSchedule

WORK_POOL = "synthface-process"
ON_DEMAND = "on-demand"


@dataclass(frozen=True)
class FlowEntry:
    """One deployable flow."""

    flow: str  # the Prefect flow name
    entrypoint: str  # module path of the flow object: "synthface.flows.x.function"
    kind: str | None  # config kind whose files become deployments; None: one on-demand
    description: str
    tags: tuple[str, ...] = field(default_factory=tuple)

    def load(self):
        module, name = self.entrypoint.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)


FLOWS: tuple[FlowEntry, ...] = (
    FlowEntry(
        "generate-synthetic",
        "synthface.flows.generate.generate_synthetic",
        "generate",
        "Generate a synthetic identity set: shards, QC, manifest, report.",
        ("generate",),
    ),
    FlowEntry(
        "train-recognizer",
        "synthface.flows.training.train_recognizer",
        "recognition",
        "Train (or resume) a face recognizer on identity shards.",
        ("train",),
    ),
    FlowEntry(
        "train-generator",
        "synthface.flows.training.train_generator",
        "generators",
        "Train (or resume) a diffusion face generator.",
        ("train",),
    ),
    FlowEntry(
        "benchmark-synthetic",
        "synthface.flows.benchmark.benchmark_synthetic",
        "benchmark",
        "Train one recognizer recipe on each generator's synthetic set and on real data; "
        "verify on held-out identities; report the gap to real.",
        ("benchmark",),
    ),
    FlowEntry(
        "privacy-benchmark",
        "synthface.flows.privacy.privacy_benchmark",
        "privacy",
        "Train, verify and attack privacy protections against the unprotected baseline.",
        ("benchmark", "privacy"),
    ),
    FlowEntry(
        "frcsyn-benchmark",
        "synthface.flows.training.frcsyn_benchmark",
        None,
        "Score two recognizers under an FRCSyn sub-task, package and validate the submission.",
        ("benchmark",),
    ),
)


@dataclass(frozen=True)
class Deployment:
    """One row of the table: what both serve and prefect.yaml register."""

    entry: FlowEntry
    name: str
    parameters: dict[str, Any]
    schedule: DeploymentSchedule | None
    source: str | None  # the config reference, or None for an on-demand deployment

    @property
    def full_name(self) -> str:
        return f"{self.entry.flow}/{self.name}"

    @property
    def description(self) -> str:
        return self.entry.description + (f" Config: {self.source}." if self.source else "")

    @property
    def tags(self) -> list[str]:
        return ["synthface", *self.entry.tags]


def config_ref(path: str | os.PathLike, base: Path) -> str:
    """How a deployment names its config: ``synthface:...`` for a shipped one, else a path
    relative to ``base`` (where serve or ``prefect deploy`` runs) when inside it."""
    text = os.fspath(path)
    if text.startswith(SHIPPED_PREFIX):
        return text
    shipped = shipped_ref(Path(text))
    if shipped is not None:
        return shipped
    absolute = Path(text).expanduser().absolute()
    try:
        return absolute.relative_to(base.absolute()).as_posix()
    except ValueError:
        return str(absolute)


def _schedule(cfg) -> DeploymentSchedule | None:
    sched = getattr(cfg, "schedule", None)
    if isinstance(sched, DeploymentSchedule) and sched.describe() is not None:
        return sched
    return None


def _name(cfg, ref: str) -> str:
    name = getattr(cfg, "name", None)
    return name if isinstance(name, str) else Path(ref).stem


def build_table(
    configs: Iterable[str | os.PathLike] | None = None,
    *,
    flows: Iterable[str] | None = None,
    base: Path | None = None,
) -> list[Deployment]:
    """The deployments of ``configs`` (default: every shipped config) and of the flows
    without a config kind, optionally only those of ``flows``; every config is validated.
    """
    base = base or Path.cwd()
    by_kind = {e.kind: e for e in FLOWS if e.kind is not None}
    wanted = set(flows) if flows is not None else None
    known = {e.flow for e in FLOWS}
    if wanted is not None and wanted - known:
        raise ConfigError(
            f"unknown flow(s) {', '.join(sorted(wanted - known))} (known: {', '.join(sorted(known))})"
        )
    rows: list[Deployment] = []
    for path in shipped_configs() if configs is None else configs:
        kind = infer_kind(path)
        entry = by_kind.get(kind)
        if entry is None and configs is None:
            continue  # a shipped config of a kind no flow runs (e.g. quality)
        if entry is None:
            raise ConfigError(f"{path}: no flow deploys configs of kind {kind!r}")
        if wanted is not None and entry.flow not in wanted:
            continue
        ref = config_ref(path, base)
        cfg = load_config(path, model_for_kind(kind))
        rows.append(Deployment(entry, _name(cfg, ref), {"config_file": ref}, _schedule(cfg), ref))
    for entry in FLOWS:
        if entry.kind is None and (wanted is None or entry.flow in wanted):
            rows.append(Deployment(entry, ON_DEMAND, {}, None, None))
    seen: dict[str, str | None] = {}
    for row in rows:
        if row.full_name in seen:
            raise ConfigError(
                f"{row.source}: deployment {row.full_name} is also defined by "
                f"{seen[row.full_name]} (deployment names must be unique)"
            )
        seen[row.full_name] = row.source
    if not rows:
        raise ConfigError("no deployments: no config of a deployable kind was given")
    order = {e.flow: i for i, e in enumerate(FLOWS)}
    return sorted(rows, key=lambda r: (order[r.entry.flow], r.name))


# --------------------------------------------------------------------------- serve
def runner_deployment(row: Deployment, *, schedules: bool = True):
    """The row as a ``RunnerDeployment`` for ``prefect.serve``."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

    kwargs: dict[str, Any] = {}
    if schedules and row.schedule is not None:
        s = row.schedule
        if s.cron:
            kwargs["schedules"] = [Cron(s.cron, timezone=s.timezone)]
        else:
            kwargs["schedules"] = [Interval(s.interval_seconds, timezone=s.timezone)]
    deployment = row.entry.load().to_deployment(
        name=row.name,
        parameters=row.parameters,
        description=row.description,
        tags=row.tags,
        enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH,
        **kwargs,
    )
    if deployment.entrypoint != row.entry.entrypoint:
        raise RuntimeError(
            f"{row.full_name}: Prefect's entrypoint {deployment.entrypoint!r} is not the table's "
            f"{row.entry.entrypoint!r}"
        )
    return deployment


# --------------------------------------------------------------------------- prefect.yaml
PREFECT_YAML_HEADER = """\
# GENERATED by `synthface flows deployments --write-prefect-yaml` from the deployment table
# (synthface.flows.deployments) and the configs; do not edit: change the configs and
# regenerate. `synthface flows serve`, run from this folder, registers the same
# deployments with the same parameters and schedules without a work pool.
#
#   prefect work-pool create {pool} --type process
#   prefect deploy --all
#   prefect worker start --pool {pool}          # needs PREFECT_API_URL
#   prefect deployment run generate-synthetic/default --param identities=200 --param output_dir=out/run200 --watch
#
# Each deployment loads its config from `config_file` when a run starts (a path relative
# to this folder, or synthface:KIND/NAME.yaml for a config shipped with the package);
# runs work in this folder: relative outputs and Prefect state land here unless
# SYNTHFACE_HOME says otherwise.
"""


def prefect_yaml(rows: list[Deployment], *, work_pool: str = WORK_POOL) -> str:
    """``prefect.yaml`` text for the rows (deterministic: the repository keeps one)."""
    deployments = []
    for row in rows:
        item: dict[str, Any] = {
            "name": row.name,
            "entrypoint": row.entry.entrypoint,
            "description": row.description,
            "tags": row.tags,
            "parameters": row.parameters,
            "enforce_parameter_schema": True,
            "work_pool": {"name": work_pool},
        }
        s = row.schedule
        if s is not None:
            spec = {"cron": s.cron} if s.cron else {"interval": s.interval_seconds}
            item["schedules"] = [spec | {"timezone": s.timezone}]
        deployments.append(item)
    doc = {
        "name": "synthface",
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PWD }}"}}],
        "deployments": deployments,
    }
    body = yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)
    return PREFECT_YAML_HEADER.format(pool=work_pool) + body
