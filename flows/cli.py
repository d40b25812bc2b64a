"""``synthface flows ...``: run and serve the Prefect flows

Prefect is imported inside the commands, after :func:`synthface.flows.defaults.prepare_prefect_env`
has chosen the Prefect home (``.prefect/`` under ``$SYNTHFACE_HOME`` or the current
directory in ephemeral mode) or checked that the server at ``PREFECT_API_URL`` answers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from synthface.flows.deployments import WORK_POOL
from synthface.pipeline.atomic import atomic_write_text
from synthface.pipeline.cli import add_group, add_json_flag, emit


def _nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def cmd_run_generate(args: argparse.Namespace) -> int:
    from synthface.flows.defaults import load_generate_config, prepare_prefect_env
    from synthface.pipeline.paths import PathRole, resolve_path

    cfg = load_generate_config(args.config, args.set)
    if args.output_dir is not None:
        out = resolve_path(args.output_dir, PathRole.OUTPUT, Path.cwd())
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": out})})
    prepare_prefect_env()
    from synthface.flows.console import one_error_line
    from synthface.flows.generate import generate_synthetic

    with one_error_line(getattr(args, "debug", False)):
        summary = generate_synthetic(config=cfg)
    text = "\n".join(
        [
            f"dataset: {summary['dataset_dir']} ({summary['num_identities']} identities, "
            f"{summary['num_samples']} samples, {summary['num_shards']} shards)",
            f"shards:  {summary['shards_dir']}",
            f"view:    {summary['view']}",
            *([f"report:  {summary['report']['markdown']}"] if "report" in summary else []),
        ]
    )
    emit(args, summary, text)
    return 0


def cmd_run_privacy(args: argparse.Namespace) -> int:
    from synthface.flows.defaults import prepare_prefect_env
    from synthface.pipeline.config import load_config
    from synthface.recognition.privacy.config import PrivacyBenchmarkConfig

    cfg = load_config(args.config, PrivacyBenchmarkConfig, args.set)
    prepare_prefect_env()
    from synthface.flows.privacy import privacy_benchmark

    summary = privacy_benchmark(config=cfg)
    emit(args, summary, f"table: {summary['tables']['markdown']}")
    return 0


def cmd_run_train_recognizer(args: argparse.Namespace) -> int:
    from synthface.flows.defaults import prepare_prefect_env
    from synthface.pipeline.config import load_config
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.training.launch import Topology, default_processes

    cfg = load_config(args.config, TrainConfig, args.set)
    topology = Topology(  # bad launch arguments fail before Prefect starts
        args.processes or default_processes(cfg.train.device),
        args.nodes,
        args.machine_rank,
        args.main_process_ip,
        args.main_process_port,
    )
    prepare_prefect_env()
    from synthface.flows.console import one_error_line
    from synthface.flows.training import train_recognizer

    with one_error_line(getattr(args, "debug", False)):
        summary = train_recognizer(
            config=cfg,
            processes=topology.processes,
            nodes=topology.nodes,
            machine_rank=topology.machine_rank,
            main_process_ip=topology.main_process_ip,
            main_process_port=topology.main_process_port,
        )
    if summary.get("model_dir"):
        text = f"trained {summary['global_step']} steps; recognizer saved to {summary['model_dir']}"
    else:
        text = f"machine_rank {topology.machine_rank} done; node 0 reports the model"
    emit(args, summary, text)
    return 0


def cmd_run_train_generator(args: argparse.Namespace) -> int:
    from synthface.flows.defaults import prepare_prefect_env
    from synthface.generators.config import GeneratorConfig
    from synthface.pipeline.config import load_config

    cfg = load_config(args.config, GeneratorConfig, args.set)
    prepare_prefect_env()
    from synthface.flows.console import one_error_line
    from synthface.flows.training import train_generator

    with one_error_line(getattr(args, "debug", False)):
        summary = train_generator(config=cfg)
    emit(args, summary)
    return 0


def cmd_run_benchmark(args: argparse.Namespace) -> int:
    from synthface.flows.benchmark_cli import cmd_synthetic

    args.no_prefect = False
    return cmd_synthetic(args)


def cmd_run_frcsyn(args: argparse.Namespace) -> int:
    from synthface.flows.defaults import prepare_prefect_env

    prepare_prefect_env()
    from synthface.flows.console import one_error_line
    from synthface.flows.training import frcsyn_benchmark

    with one_error_line(getattr(args, "debug", False)):
        summary = frcsyn_benchmark(
            proposed=args.proposed,
            baseline=args.baseline,
            eval_tree=args.eval_tree,
            calibration_tree=args.calibration_tree,
            out_dir=args.out_dir,
            subtask=args.subtask,
            edition=args.edition,
            datasets=args.dataset,
            device=args.device,
            group_map=args.group_map,
        )
    emit(args, summary, f"package: {summary['zip']} (valid)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from synthface.flows.defaults import prepare_prefect_env
    from synthface.flows.deployments import build_table

    build_table(args.config, flows=args.flow)  # bad configs fail before Prefect starts
    url = prepare_prefect_env()
    if url is None and not args.no_schedules:
        print(
            "synthface: note: PREFECT_API_URL is not set; schedules need a real server "
            "(`prefect server start`, then export PREFECT_API_URL=http://127.0.0.1:4200/api)"
        )
    from synthface.flows.serve import serve_deployments

    serve_deployments(
        args.config, flows=args.flow, schedules=not args.no_schedules, limit=args.limit
    )
    return 0


def cmd_deployments(args: argparse.Namespace) -> int:
    from synthface.flows.deployments import build_table, prefect_yaml

    if args.write_prefect_yaml is not None:
        target = Path(args.write_prefect_yaml)
        rows = build_table(args.config, flows=args.flow, base=target.absolute().parent)
        atomic_write_text(target, prefect_yaml(rows, work_pool=args.work_pool))
    else:
        rows = build_table(args.config, flows=args.flow)
    data = [
        {
            "deployment": r.full_name,
            "entrypoint": r.entry.entrypoint,
            "schedule": r.schedule and (r.schedule.cron or f"every {r.schedule.interval_seconds}s"),
            "timezone": r.schedule and r.schedule.timezone,
            "config": r.source,
        }
        for r in rows
    ]
    lines = ["deployment\tschedule\ttimezone\tconfig"] + [
        f"{d['deployment']}\t{d['schedule'] or '-'}\t{d['timezone'] or '-'}\t{d['config'] or '-'}"
        for d in data
    ]
    if args.write_prefect_yaml is not None:
        lines.append(f"wrote {args.write_prefect_yaml} ({len(rows)} deployments)")
    emit(args, data, "\n".join(lines))
    return 0


def _add_table_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        action="append",
        metavar="FILE",
        help="config file of any deployable kind (its `kind:` key, else its folder); "
        "repeatable (default: every config shipped with the package)",
    )
    p.add_argument(
        "--flow",
        action="append",
        metavar="NAME",
        help="only this flow's deployments, e.g. generate-synthetic (repeatable)",
    )


def _config_and_set(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("config", metavar="CONFIG", help=what)
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    add_json_flag(p)


def _add_run_training(run_sub: argparse._SubParsersAction) -> None:
    """The training and benchmark flows as ``synthface flows run NAME`` (their deployment
    names), so every deployable flow also runs without a server."""
    rec = run_sub.add_parser(
        "train-recognizer",
        help="train-recognizer: train (or resume) a recognizer on every GPU of this node",
        description="Run train-recognizer: launches `accelerate launch -m "
        "synthface.recognition.training CONFIG --resume latest` with one process per GPU "
        "(1 on CPU; several CPU processes use gloo) and streams its log. Writes what "
        "`synthface recognition train` writes, to train.output_dir. Several nodes: run this "
        "on each with --nodes, its own --machine-rank and node 0's --main-process-ip.",
    )
    _config_and_set(rec, "a training config (configs/recognition/*.yaml)")
    rec.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="processes on this node (default: one per visible GPU, 1 on CPU)",
    )
    rec.add_argument("--nodes", type=int, default=1, help="machines taking part (default 1)")
    rec.add_argument(
        "--machine-rank", type=int, default=0, help="this machine's index (0: the main node)"
    )
    rec.add_argument("--main-process-ip", metavar="ADDR", help="node 0's address (nodes > 1)")
    rec.add_argument(
        "--main-process-port",
        type=int,
        metavar="PORT",
        help="node 0's port (default 29500 across nodes, a free one on one node)",
    )
    rec.set_defaults(func=cmd_run_train_recognizer)

    gen = run_sub.add_parser(
        "train-generator",
        help="train-generator: train (or resume) a diffusion face generator",
    )
    _config_and_set(gen, "a generator training config (configs/generators/*.yaml)")
    gen.set_defaults(func=cmd_run_train_generator)

    bench = run_sub.add_parser(
        "benchmark-synthetic",
        help="benchmark-synthetic: the paper protocol (as `synthface benchmark synthetic`)",
    )
    _config_and_set(bench, "a benchmark config (configs/benchmark/*.yaml)")
    bench.set_defaults(func=cmd_run_benchmark)

    fr = run_sub.add_parser(
        "frcsyn-benchmark",
        help="frcsyn-benchmark: score two recognizers under an FRCSyn sub-task, package, validate",
    )
    for name, what in (
        ("--proposed", "the proposed recognizer (checkpoint directory or .onnx)"),
        ("--baseline", "the baseline recognizer"),
        ("--eval-tree", "the evaluation tree (images/, comparisons/)"),
        ("--calibration-tree", "the calibration tree"),
        ("--out-dir", "where the run and its package go (relative: under $SYNTHFACE_HOME)"),
    ):
        fr.add_argument(name, required=True, type=_nonempty, help=what)
    fr.add_argument("--subtask", default="2.1", help="FRCSyn sub-task (default 2.1)")
    fr.add_argument("--edition", default="cvpr2024", help="FRCSyn edition (default cvpr2024)")
    fr.add_argument("--dataset", action="append", help="only these datasets (repeatable)")
    fr.add_argument("--device", default="cpu", help="device for embedding (default cpu)")
    fr.add_argument("--group-map", help="'subject,group' file for BUPT's demographic groups")
    add_json_flag(fr)
    fr.set_defaults(func=cmd_run_frcsyn)


def register(groups: argparse._SubParsersAction) -> None:
    sub = add_group(groups, "flows", "run and serve the Prefect flows")

    run = sub.add_parser(
        "run",
        help="run a flow in this process (ephemeral API unless PREFECT_API_URL is set)",
        description="Run a flow now, in this process.",
    )
    run_sub = run.add_subparsers(dest="flow", metavar="FLOW", required=True)
    gen = run_sub.add_parser(
        "generate",
        aliases=["generate-synthetic"],
        help="generate-synthetic: generate a synthetic identity set",
        description="Run generate-synthetic. Writes the dataset (shards/, records/, qc/, "
        "plan/, views/, report/, dataset.json, ...) to output.dir and, on the ephemeral "
        "API, Prefect's state to .prefect/; both relative to $SYNTHFACE_HOME, else the "
        "current directory. Relative input paths in the config resolve against its folder.",
    )
    gen.add_argument(
        "--config",
        help="a generate config file or synthface:generate/NAME.yaml "
        "(default: the embedded default, synthface:generate/default.yaml)",
    )
    gen.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    gen.add_argument(
        "--output-dir",
        type=_nonempty,
        help="dataset directory, overrides output.dir (relative: under $SYNTHFACE_HOME or "
        "the current directory)",
    )
    add_json_flag(gen)
    gen.set_defaults(func=cmd_run_generate)
    priv = run_sub.add_parser(
        "privacy-benchmark",
        help="privacy-benchmark: train, verify and attack protection methods (one table)",
    )
    priv.add_argument("config", metavar="CONFIG", help="a configs/privacy/*.yaml file")
    priv.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    add_json_flag(priv)
    priv.set_defaults(func=cmd_run_privacy)
    _add_run_training(run_sub)

    serve = sub.add_parser(
        "serve",
        help="register the deployments (the same as prefect.yaml's) and execute their runs",
        description=(
            "Serve the deployment table with prefect.serve: one deployment per config "
            "(generate-synthetic/<name>, train-recognizer/<stem>, train-generator/<stem>) "
            "with the config's schedule, plus frcsyn-benchmark/on-demand. Writes nothing "
            "itself; runs write where their configs say (relative outputs under "
            "$SYNTHFACE_HOME or this directory) and, without PREFECT_API_URL, Prefect's "
            "state to .prefect/. Trigger runs with "
            "`prefect deployment run generate-synthetic/default --param identities=100`."
        ),
    )
    _add_table_args(serve)
    serve.add_argument("--no-schedules", action="store_true", help="register without schedules")
    serve.add_argument("--limit", type=int, default=None, help="at most this many concurrent runs")
    serve.set_defaults(func=cmd_serve)

    dep = sub.add_parser(
        "deployments",
        help="list the deployment table (what serve registers) with schedules and time zones",
        description="List the deployment table. With --write-prefect-yaml, also write it "
        "as prefect.yaml for `prefect deploy --all` (the only file this command writes).",
    )
    _add_table_args(dep)
    dep.add_argument(
        "--write-prefect-yaml",
        nargs="?",
        const="prefect.yaml",
        metavar="PATH",
        help="write the table to PATH (default ./prefect.yaml); config paths in it are "
        "relative to PATH's folder",
    )
    dep.add_argument(
        "--work-pool",
        default=WORK_POOL,
        help=f"work pool of the written deployments (default {WORK_POOL})",
    )
    add_json_flag(dep)
    dep.set_defaults(func=cmd_deployments)
