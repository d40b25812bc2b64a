"""``privacy-benchmark``: every protection method trained on one shard set, verified, attacked.

A thin Prefect wrapper around ``synthface.recognition.privacy.benchmark``: one task per
method and step (train, verify, attack), so a failed attack retries without retraining,
and the steps themselves skip work that is already on disk. The table comes back as a
Prefect table artifact and as ``OUT/table.{md,csv}`` + ``results.json``.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from synthface.recognition.privacy.config import PrivacyBenchmarkConfig


def _log(message: str) -> None:
    get_run_logger().info(message)


@task(name="privacy-check", cache_policy=NO_CACHE)
def check_task(config: PrivacyBenchmarkConfig) -> list | None:
    from synthface.recognition.privacy.benchmark import check_inputs, region_of_interest

    check_inputs(config)
    return region_of_interest(config)


@task(name="privacy-judge", cache_policy=NO_CACHE, retries=1)
def judge_task(config: PrivacyBenchmarkConfig) -> str:
    from synthface.recognition.privacy.benchmark import train_judge

    return train_judge(config, _log)


@task(name="privacy-train", cache_policy=NO_CACHE, retries=1)
def train_task(config: PrivacyBenchmarkConfig, method: str, roi: list | None) -> dict:
    from synthface.recognition.privacy.benchmark import train_method

    return train_method(config, method, roi, _log)


@task(name="privacy-verify", cache_policy=NO_CACHE)
def verify_task(config: PrivacyBenchmarkConfig, method: str, model_dir: str) -> dict:
    from synthface.recognition.privacy.benchmark import evaluate_method

    return evaluate_method(config, method, model_dir, _log)


@task(name="privacy-attack", cache_policy=NO_CACHE, retries=1)
def attack_task(config: PrivacyBenchmarkConfig, method: str, model_dir: str, judge: str) -> dict:
    from synthface.recognition.privacy.benchmark import attack_method

    return attack_method(config, method, model_dir, judge, _log)


@task(name="privacy-table", cache_policy=NO_CACHE)
def table_task(config: PrivacyBenchmarkConfig, results: dict) -> dict:
    from synthface.recognition.privacy.benchmark import table_rows, write_table

    return {"tables": write_table(config, results), "rows": table_rows(config, results)}


@flow(name="privacy-benchmark", validate_parameters=True)
def privacy_benchmark(
    config: PrivacyBenchmarkConfig | None = None, config_file: str | None = None
) -> dict[str, Any]:
    """Accuracy vs attack success of protection methods, the unprotected baseline included.

    Args:
        config: the whole ``privacy`` config (``configs/privacy/*.yaml``).
        config_file: instead of ``config``, a config file loaded when the run starts.
    """
    from synthface.flows.defaults import flow_config
    from synthface.pipeline.errors import ConfigError

    config = flow_config(PrivacyBenchmarkConfig, config, config_file, "privacy-benchmark")
    if config is None:
        raise ConfigError("privacy-benchmark parameters: give config or config_file")
    roi = check_task(config)
    judge = judge_task(config)
    results = {}
    for spec in config.methods:
        trained = train_task(config, spec.name, roi)
        results[spec.name] = {
            "train": trained,
            "eval": verify_task(config, spec.name, trained["model_dir"]),
            "attack": attack_task(config, spec.name, trained["model_dir"], judge),
        }
    summary = table_task(config, results)
    create_table_artifact(summary["rows"], key="privacy-benchmark")
    with open(summary["tables"]["markdown"]) as fh:
        create_markdown_artifact(fh.read(), key="privacy-benchmark-table")
    return summary
