"""The ``generate-synthetic`` flow: plan -> one task per shard -> finalize.

Only orchestration lives here. The work is ``synthface.generators.dataset``'s
``prepare_generation``, ``produce_shard`` and ``finalize_generation``, which run the
same without Prefect (``generate_dataset``).

Resume does not rely on Prefect's result cache: the dataset directory is the cache.
Every shard task first asks ``shard_complete`` whether its tar and sidecar are
complete and consistent, so retries, re-runs and runs after a crash only redo missing or
corrupt shards, and task inputs are never hashed or persisted (``NO_CACHE``).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from pydantic import Field

from synthface.flows.runners import build_task_runner, check_gpu_workers, retry_unless_bad_input
from synthface.generators.dataset import GenerateConfig, ShardWork
from synthface.pipeline.config import apply_overrides, validate_config
from synthface.pipeline.paths import resolve_paths

PositiveInt = Annotated[int, Field(ge=1)]


def resolve_config(
    config: GenerateConfig | None,
    *,
    config_file: str | None = None,
    output_dir: str | None = None,
    identities: int | None = None,
    samples_per_identity: int | None = None,
    seed: int | None = None,
    overrides: list[str] | None = None,
) -> GenerateConfig:
    """The run's config: ``config`` or ``config_file`` (default: the embedded default),
    then the flat knobs, then ``overrides``; relative paths given here resolve against
    the run's working directory (inputs) or home (outputs)."""
    from synthface.flows.defaults import flow_config, load_default_config

    base = flow_config(GenerateConfig, config, config_file, "generate-synthetic")
    base = base if base is not None else load_default_config()
    data = base.model_dump(mode="json")
    flat = [
        ("output.dir", output_dir),
        ("identities.count", identities),
        ("identities.samples_per_identity", samples_per_identity),
        ("identities.seed", seed),
    ]
    for key, value in flat:
        if value is not None:
            section, field = key.split(".")
            data[section][field] = value
    data = apply_overrides(data, overrides)
    cfg = validate_config(
        data,
        GenerateConfig,
        "generate-synthetic parameters",
        overrides=overrides,
        override_label="generate-synthetic override",
    )
    return resolve_paths(cfg, Path.cwd())


@task(name="plan", cache_policy=NO_CACHE)
def plan_task(cfg: GenerateConfig) -> dict[str, Any]:
    from synthface.generators.dataset import prepare_generation

    logger = get_run_logger()
    t0 = time.perf_counter()
    prepared = prepare_generation(cfg)
    logger.info(
        "planned %d shards for %d identities x %d samples into %s (%.1fs)",
        len(prepared.work),
        cfg.identities.count,
        cfg.identities.samples_per_identity,
        prepared.dataset_dir,
        time.perf_counter() - t0,
    )
    for text in prepared.warnings:
        logger.warning(text)
    return {
        "dataset_config": prepared.dataset_config,
        "work": [w.to_dict() for w in prepared.work],
        "generator": prepared.generator_name,
        "warnings": list(prepared.warnings),
    }


@task(name="produce-shard", cache_policy=NO_CACHE)
def shard_task(cfg: GenerateConfig, work: dict[str, Any]) -> dict[str, Any]:
    from synthface.generators.dataset import produce_shard
    from synthface.generators.dataset.placement import worker_placement
    from synthface.pipeline.progress import progress_bar

    work_ = ShardWork.from_dict(work)
    # Resolved here, in the worker: the flow process may have no GPU at all.
    where = worker_placement(cfg.generator.device, cfg.generator.allow_cpu_fallback)
    logical = "" if where.logical_gpu is None else f" (logical GPU {where.logical_gpu})"
    get_run_logger().info(
        "shard %d: worker %s (pid %d) on %s, device %s%s",
        work_.index,
        where.worker,
        where.pid,
        where.host,
        where.device,
        logical,
    )
    with progress_bar(work_.num_samples, desc=f"shard {work_.index}", leave=False) as bar:
        return produce_shard(cfg, work_, placement=where, progress=bar.update).to_dict()


@task(name="finalize", cache_policy=NO_CACHE)
def finalize_task(cfg: GenerateConfig, dataset_config: dict, work: list[dict]) -> dict[str, Any]:
    from synthface.generators.dataset import finalize_generation

    return finalize_generation(cfg, dataset_config, [ShardWork.from_dict(w) for w in work])


@flow(name="produce-shards")
def produce_shards(
    cfg: GenerateConfig,
    work: list[dict],
    resources: dict[str, int] | None = None,
    remote: bool = False,
) -> list[dict]:
    """Map ``shard_task`` over the plan on the configured task runner; report progress.

    ``resources``: what each shard task asks of a Dask worker (``{"GPU": 1}``), attached
    through Dask's own annotations so the scheduler places one shard per GPU worker.
    """
    from prefect.context import FlowRunContext

    logger = get_run_logger()
    if remote:
        check_gpu_workers(FlowRunContext.get().task_runner, resources)
    total = sum(
        w["samples_per_identity"] * (w["last_identity"] - w["first_identity"] + 1) for w in work
    )
    progress = create_progress_artifact(
        0.0, key="generate-progress", description=f"shards of {cfg.output.dir}"
    )
    task_ = shard_task.with_options(
        retries=cfg.runner.retries,
        retry_delay_seconds=cfg.runner.retry_delay_seconds,
        retry_condition_fn=retry_unless_bad_input,
    )
    annotate = contextlib.nullcontext()
    if resources:
        import dask

        annotate = dask.annotate(resources=resources)
    with annotate:
        futures = task_.map(unmapped(cfg), work)
    t0 = time.perf_counter()
    results: list[dict] = []
    done = generated = 0
    for future in as_completed(futures):
        res = future.result()
        results.append(res)
        done += res["num_samples"]
        if not res["skipped"]:
            generated += res["num_samples"]
        elapsed = time.perf_counter() - t0
        rate = generated / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        update_progress_artifact(progress, 100.0 * done / max(total, 1))
        logger.info(
            "shard %d %s: %d/%d samples, %.2f images/s, ETA %.0fs",
            res["index"],
            "skipped (complete)" if res["skipped"] else "written",
            done,
            total,
            rate,
            eta,
        )
    return sorted(results, key=lambda r: r["index"])


def _markdown(summary: dict) -> str:
    lines = [
        f"# Synthetic dataset `{summary['dataset_dir']}`",
        "",
        f"- identities: {summary['num_identities']}, samples: {summary['num_samples']}, "
        f"shards: {summary['num_shards']}",
        f"- filtered view `{summary['view']}`: {summary['view_identities']} identities, "
        f"{summary['view_samples']} samples",
    ]
    if "card" in summary:
        lines.append(f"- dataset card: `{summary['card']}`")
    if "report" in summary:
        lines.append(f"- QC report: `{summary['report']['markdown']}`")
        if "contact_sheet" in summary["report"]:
            lines.append(f"- contact sheet: `{summary['report']['contact_sheet']}`")
    return "\n".join(lines) + "\n"


@flow(name="generate-synthetic", validate_parameters=True)
def generate_synthetic(
    config: GenerateConfig | None = None,
    config_file: str | None = None,
    output_dir: Annotated[str, Field(min_length=1)] | None = None,
    identities: PositiveInt | None = None,
    samples_per_identity: PositiveInt | None = None,
    seed: Annotated[int, Field(ge=0)] | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Generate a synthetic identity set: identities -> shards -> QC -> manifest + report.

    Args:
        config: the full ``generate`` config (default: ``configs/generate/default.yaml``).
        config_file: instead of ``config``, a config file loaded when the run starts (a path
            relative to the run's working directory, or ``synthface:generate/NAME.yaml``).
        output_dir: overrides ``output.dir`` (relative: under ``$SYNTHFACE_HOME`` or the
            run's working directory).
        identities: overrides ``identities.count``.
        samples_per_identity: overrides ``identities.samples_per_identity``.
        seed: overrides ``identities.seed``.
        overrides: ``section.key=value`` strings applied last (values parsed as YAML).
    """
    logger = get_run_logger()
    cfg = resolve_config(
        config,
        config_file=config_file,
        output_dir=output_dir,
        identities=identities,
        samples_per_identity=samples_per_identity,
        seed=seed,
        overrides=overrides,
    )
    runner = build_task_runner(cfg)  # config errors before the plan writes anything
    plan = plan_task(cfg)
    if runner.workers and len(plan["work"]) % runner.workers:
        rounds = -(-len(plan["work"]) // runner.workers)
        logger.info(
            "%d shards over %d workers: %d rounds, the last uses %d of %d workers "
            "(smaller output.max_samples_per_shard shortens it)",
            len(plan["work"]),
            runner.workers,
            rounds,
            len(plan["work"]) % runner.workers,
            runner.workers,
        )
    results = produce_shards.with_options(task_runner=runner.task_runner)(
        cfg, plan["work"], runner.resources, runner.remote
    )
    written = [r for r in results if not r["skipped"]]
    logger.info("%d shards written, %d already complete", len(written), len(results) - len(written))
    summary = finalize_task(cfg, plan["dataset_config"], plan["work"])
    create_table_artifact(
        [
            {
                "shard": r["index"],
                "samples": r["num_samples"],
                "skipped": r["skipped"],
                "seconds": r["seconds"],
                "sha256": r["sha256"][:16],
            }
            for r in results
        ],
        key="generate-shards",
        description="shards of this run",
    )
    qc = summary["qc"]
    create_table_artifact(
        [{"flag": k, "identities": v} for k, v in qc["flagged_identities"].items()]
        + [{"flag": f"sample:{k}", "identities": v} for k, v in qc["flagged_samples"].items()],
        key="generate-qc-flags",
        description="QC flags (identities, or samples for sample: rows)",
    )
    create_markdown_artifact(_markdown(summary), key="generate-summary")
    return {k: v for k, v in summary.items() if k != "qc"} | {
        "qc_flags": qc["flagged_identities"],
        "warnings": plan["warnings"],
    }
