"""``synthface flows ...``: run and serve the Prefect flows

Prefect is imported inside the commands, after :func:`synthface.flows.defaults.prepare_prefect_env`
has chosen the Prefect home (project-local ``.prefect/`` in ephemeral mode) or checked
that the server at ``PREFECT_API_URL`` answers.
"""

from __future__ import annotations

import argparse

from synthface.pipeline.cli import add_group, add_json_flag, emit


def cmd_run_generate(args: argparse.Namespace) -> int:
    from synthface.flows.defaults import load_generate_config, prepare_prefect_env

    cfg = load_generate_config(args.config, args.set)
    if args.output_dir:
        cfg = cfg.model_copy(
            update={"output": cfg.output.model_copy(update={"dir": args.output_dir})}
        )
    prepare_prefect_env()
    from synthface.flows.generate import generate_synthetic

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

    url = prepare_prefect_env()
    if url is None and not args.no_schedules:
        print(
            "synthface: note: PREFECT_API_URL is not set; schedules need a real server "
            "(`prefect server start`, then export PREFECT_API_URL=http://127.0.0.1:4200/api)"
        )
    from synthface.flows.serve import serve_deployments

    serve_deployments(
        args.config or None,
        train_paths=args.train_config,
        schedules=not args.no_schedules,
        limit=args.limit,
    )
    return 0


def cmd_deployments(args: argparse.Namespace) -> int:
    from synthface.flows.defaults import load_generate_config
    from synthface.flows.serve import config_files

    rows = []
    for path in config_files(args.config or None):
        cfg = load_generate_config(path)
        sched = cfg.schedule.cron or (
            f"every {cfg.schedule.interval_seconds}s" if cfg.schedule.interval_seconds else None
        )
        rows.append(
            {"deployment": f"generate-synthetic/{cfg.name}", "config": str(path), "schedule": sched}
        )
    emit(
        args,
        rows,
        "\n".join(f"{r['deployment']}\t{r['schedule'] or '-'}\t{r['config']}" for r in rows),
    )
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    sub = add_group(groups, "flows", "run and serve the Prefect flows")

    run = sub.add_parser(
        "run",
        help="run a flow in this process (ephemeral API unless PREFECT_API_URL is set)",
        description="Run a flow now, in this process.",
    )
    run_sub = run.add_subparsers(dest="flow", metavar="FLOW", required=True)
    gen = run_sub.add_parser(
        "generate", help="generate-synthetic: generate a synthetic identity set"
    )
    gen.add_argument(
        "--config", help="a configs/generate/*.yaml file (default: the embedded default)"
    )
    gen.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    gen.add_argument("--output-dir", help="override output.dir")
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
        help="register deployments (generate-synthetic/<name>, ...) and execute their runs",
        description=(
            "Serve deployments with prefect.serve: one per config file, named "
            "generate-synthetic/<config name>, with the config's schedule. Trigger runs with "
            "`prefect deployment run generate-synthetic/<name> --param identities=100`."
        ),
    )
    serve.add_argument(
        "--config",
        action="append",
        help="generate config file(s) (default: configs/generate/*.yaml)",
    )
    serve.add_argument(
        "--train-config",
        action="append",
        metavar="FILE",
        help="also serve train-recognizer/<stem>, train-generator/<stem> or "
        "privacy-benchmark/<stem> for a configs/recognition, configs/generators or "
        "configs/privacy file (repeatable)",
    )
    serve.add_argument("--no-schedules", action="store_true", help="register without schedules")
    serve.add_argument("--limit", type=int, default=None, help="at most this many concurrent runs")
    serve.set_defaults(func=cmd_serve)

    dep = sub.add_parser("deployments", help="list the deployments `serve` would register")
    dep.add_argument("--config", action="append", help="generate config file(s)")
    add_json_flag(dep)
    dep.set_defaults(func=cmd_deployments)
