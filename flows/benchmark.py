"""The ``benchmark-synthetic`` flow: every generator judged by the paper protocol.

Only orchestration lives here. The stage graph and every stage are library functions
(``synthface.generators.benchmark.run.STAGES``, run in order on one ``BenchmarkRun``);
this flow runs each content-addressed step of a stage as a Prefect task (named
``<kind>-<name>``, e.g. ``generator-id3``, ``recognizer-real-seed1``), produces each
synthetic set through the ``generate-synthetic`` flow as a subflow, and publishes the
report as artifacts. Resume never relies on Prefect's result cache: each stage's directory is
keyed by the hash of its inputs and carries a completion marker, so a re-run skips
finished stages (``NO_CACHE`` for the tasks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from synthface.generators.benchmark.config import BenchmarkConfig
from synthface.pipeline.config import apply_overrides, validate_config


def resolve_benchmark_config(
    config: BenchmarkConfig | None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
) -> BenchmarkConfig:
    """The run's config: ``config`` or ``config_file`` (loaded now), then ``overrides``
    (relative paths given in them resolve against the run's working directory)."""
    from synthface.flows.defaults import flow_config
    from synthface.pipeline.errors import ConfigError
    from synthface.pipeline.paths import resolve_paths

    cfg = flow_config(BenchmarkConfig, config, config_file, "benchmark-synthetic")
    if cfg is None:
        raise ConfigError("benchmark-synthetic parameters: give config or config_file")
    if not overrides:
        return cfg
    data = apply_overrides(cfg.model_dump(mode="json"), overrides)
    cfg = validate_config(
        data,
        BenchmarkConfig,
        "benchmark-synthetic parameters",
        overrides=overrides,
        override_label="benchmark-synthetic override",
    )
    return resolve_paths(cfg, Path.cwd())


@flow(name="benchmark-synthetic", validate_parameters=True)
def benchmark_synthetic(
    config: BenchmarkConfig | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Train on each generator's synthetic identities, verify on held-out real ones, report.

    Args:
        config: the whole ``benchmark`` config (``configs/benchmark/*.yaml``).
        config_file: instead of ``config``, a config file loaded when the run starts.
        overrides: ``section.key=value`` strings applied to it (values parsed as YAML).
    """
    from synthface.flows.generate import generate_synthetic
    from synthface.generators.benchmark.run import STAGES, start

    cfg = resolve_benchmark_config(config, config_file, overrides)
    logger = get_run_logger()

    def execute(label: str, work, stage_dir: Path):
        logger.info("stage %s -> %s", label, stage_dir)
        stage = task(
            work,
            name=label.replace("/", "-"),
            cache_policy=NO_CACHE,
            retries=cfg.runner.retries,
        )
        return stage(stage_dir)

    def generate(gen_cfg):
        return generate_synthetic(config=gen_cfg)

    run = start(cfg, execute=execute, generate=generate)
    for stage in STAGES:  # the table's stages in order; each content-addressed step a task
        logger.info("benchmark stage %s", stage.__name__)
        stage(run)
    summary = run.summary
    stages = summary["stages"]
    logger.info(
        "%d stages run, %d found complete; report: %s",
        len(stages["executed"]),
        len(stages["skipped"]),
        summary["report"]["markdown"],
    )
    create_table_artifact(
        [
            {
                "training set": name,
                **{p: round(v[p]["accuracy"], 2) for p in summary["protocols"]},
                "mean": round(summary["mean_accuracy"][name], 2),
                "std over seeds": round(summary["mean_accuracy_std"][name], 2),
                "vs": summary["sets"][name]["reference"] or "",
                "gap": round(summary["gap_to_real"].get(name, {}).get("mean", 0.0), 2),
                "gate": ((summary.get("distance") or {}).get("sets") or {})
                .get(name, {})
                .get("verdict", ""),
            }
            for name, v in summary["verification"].items()
        ],
        key="benchmark-accuracy",
        description="10-fold verification accuracy (%) per protocol per training set, "
        "mean over training seeds",
    )
    create_markdown_artifact(
        Path(summary["report"]["markdown"]).read_text(), key="benchmark-report"
    )
    return {
        "report": summary["report"],
        "mean_accuracy": summary["mean_accuracy"],
        "gap_to_real": summary["gap_to_real"],
        "stages": stages,
    }
