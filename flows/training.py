"""Training and benchmarking flows: thin Prefect wrappers around the library functions.

``train-recognizer`` launches ``python -m synthface.recognition.training`` on every GPU of
the node (``synthface.recognition.training.launch``), ``train-generator`` runs
``synthface.generators.training.train_generator``, and ``frcsyn-benchmark`` scores two
recognizers under an FRCSyn sub-task, packages the submission zip and validates it
(``synthface.recognition.frcsyn``). Both training functions resume from their newest checkpoint,
so a retried task continues instead of starting over.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from synthface.generators.config import GeneratorConfig
from synthface.recognition.config import TrainConfig


def _retry_crashes(task, task_run, state) -> bool:
    """Retry a launch whose processes crashed (a killed rank, a lost peer): the retry
    resumes from the last checkpoint. A ``synthface: error:`` failure would only repeat."""
    from synthface.recognition.training.launch import LaunchFailed

    exc = getattr(state, "data", None)
    return isinstance(exc, LaunchFailed) and exc.crashed


@task(name="train-recognizer", cache_policy=NO_CACHE, retries=1, retry_condition_fn=_retry_crashes)
def train_recognizer_task(config: TrainConfig, topology: dict[str, Any]) -> dict[str, Any]:
    from synthface.recognition.training.launch import Topology, launch_training

    logger = get_run_logger()
    return launch_training(config, Topology(**topology), log=logger.info)


def _config(model, config, config_file: str | None, flow: str, overrides=None):
    from synthface.flows.defaults import flow_config
    from synthface.pipeline.config import apply_overrides, validate_config
    from synthface.pipeline.errors import ConfigError
    from synthface.pipeline.paths import resolve_paths

    cfg = flow_config(model, config, config_file, flow)
    if cfg is None:
        raise ConfigError(f"{flow} parameters: give config or config_file")
    if not overrides:
        return cfg
    data = apply_overrides(cfg.model_dump(mode="json"), overrides)
    cfg = validate_config(
        data, model, f"{flow} parameters", overrides=overrides, override_label=f"{flow} override"
    )
    return resolve_paths(cfg, Path.cwd())


@flow(name="train-recognizer", validate_parameters=True)
def train_recognizer(
    config: TrainConfig | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    processes: Annotated[int, Field(ge=1)] | None = None,
    nodes: Annotated[int, Field(ge=1)] = 1,
    machine_rank: Annotated[int, Field(ge=0)] = 0,
    main_process_ip: str | None = None,
    main_process_port: Annotated[int, Field(ge=1, le=65535)] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a face recognizer on identity shards, in launched processes.

    The flow starts ``accelerate launch -m synthface.recognition.training`` (one process
    per GPU) and streams its output into the run's log; a retried task resumes from the
    newest checkpoint. Several nodes: run the flow on each, same config, its own
    ``machine_rank``.

    Args:
        config: the whole ``recognition`` config.
        config_file: instead of ``config``, a config file loaded when the run starts.
        overrides: ``section.key=value`` changes to the config (values parsed as YAML).
        processes: processes on this node (default: one per visible GPU, 1 on CPU).
        nodes: machines taking part; each runs this flow with its own machine_rank.
        machine_rank: this machine's index, 0 on the node at main_process_ip.
        main_process_ip: address of node 0 (required with nodes > 1).
        main_process_port: its port (default 29500 across nodes, a free one on one node).
    """
    from synthface.recognition.training.launch import Topology, default_processes

    config = _config(TrainConfig, config, config_file, "train-recognizer", overrides)
    topology = Topology(
        processes or default_processes(config.train.device),
        nodes,
        machine_rank,
        main_process_ip,
        main_process_port,
    )
    summary = train_recognizer_task(config, asdict(topology))
    if summary.get("validation"):
        create_table_artifact(
            [{"set": k, "accuracy": v} for k, v in summary["validation"].items()],
            key="train-recognizer-validation",
        )
    if summary.get("model_dir"):
        create_markdown_artifact(
            f"Recognizer: `{summary['model_dir']}` (step {summary['global_step']}, "
            f"{summary['processes']} process(es) x {summary['nodes']} node(s))",
            key="train-recognizer-model",
        )
        get_run_logger().info(
            "recognizer: %s (step %d)", summary["model_dir"], summary["global_step"]
        )
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
