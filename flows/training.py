"""Training and benchmarking flows: thin Prefect wrappers around the library functions.

``train-recognizer`` runs ``synthface.recognition.training.train``, ``train-generator`` runs
``synthface.generators.training.train_generator``, and ``frcsyn-benchmark`` scores two
recognizers under an FRCSyn sub-task, packages the submission zip and validates it
(``synthface.recognition.frcsyn``). Both training functions resume from their newest checkpoint,
so a retried task continues instead of starting over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from synthface.generators.config import GeneratorConfig
from synthface.recognition.config import TrainConfig


@task(name="train-recognizer", cache_policy=NO_CACHE, retries=1)
def train_recognizer_task(config: TrainConfig) -> dict[str, Any]:
    from synthface.recognition.training import train

    result = train(config, resume="latest")
    return {
        "output_dir": str(result.output_dir),
        "global_step": result.global_step,
        "completed": result.completed,
        "model_dir": str(result.model_dir) if result.model_dir else None,
        "metrics": result.metrics,
        "validation": result.validation,
    }


def _config(model, config, config_file: str | None, flow: str):
    from synthface.flows.defaults import flow_config
    from synthface.pipeline.errors import ConfigError

    cfg = flow_config(model, config, config_file, flow)
    if cfg is None:
        raise ConfigError(f"{flow} parameters: give config or config_file")
    return cfg


@flow(name="train-recognizer", validate_parameters=True)
def train_recognizer(
    config: TrainConfig | None = None, config_file: str | None = None
) -> dict[str, Any]:
    """Train (or resume) a face recognizer on identity shards.

    Args:
        config: the whole ``recognition`` config.
        config_file: instead of ``config``, a config file loaded when the run starts.
    """
    config = _config(TrainConfig, config, config_file, "train-recognizer")
    summary = train_recognizer_task(config)
    if summary["validation"]:
        create_table_artifact(
            [{"set": k, "accuracy": v} for k, v in summary["validation"].items()],
            key="train-recognizer-validation",
        )
    get_run_logger().info("recognizer: %s (step %d)", summary["model_dir"], summary["global_step"])
    return summary


@task(name="train-generator", cache_policy=NO_CACHE, retries=1)
def train_generator_task(config: GeneratorConfig) -> dict[str, Any]:
    from synthface.generators.training import train_generator as train

    logger = get_run_logger()

    def log(row: dict) -> None:
        logger.info("step %s: %s", row.get("step"), {k: v for k, v in row.items() if k != "step"})

    return train(config, resume=True, log=log)


@flow(name="train-generator", validate_parameters=True)
def train_generator(
    config: GeneratorConfig | None = None, config_file: str | None = None
) -> dict[str, Any]:
    """Train (or resume) a diffusion face generator (any registered one: ID³, plain, UIFace).

    Args:
        config: the whole ``generators`` config.
        config_file: instead of ``config``, a config file loaded when the run starts.
    """
    return train_generator_task(_config(GeneratorConfig, config, config_file, "train-generator"))


@task(name="frcsyn-score", cache_policy=NO_CACHE)
def frcsyn_score_task(
    subtask: str,
    edition: str,
    proposed: str,
    baseline: str,
    eval_tree: str,
    calibration_tree: str,
    out_dir: str,
    datasets: list[str] | None,
    device: str,
    group_map: str | None = None,
) -> dict:
    from synthface.recognition import load_embedder
    from synthface.recognition.frcsyn.rules import get_subtask
    from synthface.recognition.frcsyn.scoring import embed_tree_images, score_run

    systems = {}
    for name, path in (("proposed", proposed), ("baseline", baseline)):
        emb = load_embedder(path, device=device)
        systems[name] = lambda images_dir, relpaths, emb=emb: embed_tree_images(
            images_dir, relpaths, emb
        )
    return score_run(
        get_subtask(subtask, edition),
        eval_tree,
        calibration_tree,
        systems,
        out_dir,
        datasets=datasets,
        models={"proposed": proposed, "baseline": baseline},
        group_map=group_map,
    )


@task(name="frcsyn-package", cache_policy=NO_CACHE)
def frcsyn_package_task(
    run_dir: str, out_dir: str, comparisons: str, subtask: str, edition: str
) -> dict:
    from synthface.recognition.frcsyn.package import package_run, validate_package

    zip_path = package_run(run_dir, out_dir)
    report = validate_package(
        zip_path, comparisons, subtask=subtask, edition=edition, run_dir=run_dir
    )
    return {"zip": str(zip_path), "valid": bool(report.ok), "problems": list(report.problems)}


@flow(name="frcsyn-benchmark", validate_parameters=True)
def frcsyn_benchmark(
    proposed: str,
    baseline: str,
    eval_tree: str,
    calibration_tree: str,
    out_dir: str,
    subtask: str = "2.1",
    edition: str = "cvpr2024",
    datasets: list[str] | None = None,
    device: str = "cpu",
    group_map: str | None = None,
) -> dict[str, Any]:
    """Score two recognizers under an FRCSyn sub-task, then package and validate the zip.

    ``group_map``: 'subject,group' file for BUPT's demographic groups (Task 1). A relative
    ``out_dir`` is under ``$SYNTHFACE_HOME`` or the run's working directory.
    """
    from synthface.pipeline.paths import PathRole, resolve_path

    out_dir = resolve_path(out_dir, PathRole.OUTPUT, Path.cwd())
    run = frcsyn_score_task(
        subtask,
        edition,
        proposed,
        baseline,
        eval_tree,
        calibration_tree,
        out_dir,
        datasets,
        device,
        group_map,
    )
    package = frcsyn_package_task(
        out_dir,
        str(Path(out_dir) / "package"),
        str(Path(eval_tree) / "comparisons"),
        subtask,
        edition,
    )
    report = Path(out_dir) / "report.md"
    if report.is_file():
        create_markdown_artifact(report.read_text(), key="frcsyn-report")
    if not package["valid"]:
        raise RuntimeError(f"{package['zip']}: submission failed validation: {package['problems']}")
    return {"metrics": run.get("metrics"), **package}
