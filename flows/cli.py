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
