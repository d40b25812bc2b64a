"""``synthface privacy ...``: protection methods and their benchmark (no Prefect needed)."""

from __future__ import annotations

import argparse

from synthface.pipeline.cli import add_group, add_json_flag, emit


def cmd_benchmark(args: argparse.Namespace) -> int:
    import sys

    from synthface.pipeline.config import load_config
    from synthface.recognition.privacy.benchmark import run_benchmark
    from synthface.recognition.privacy.config import PrivacyBenchmarkConfig

    cfg = load_config(args.config, PrivacyBenchmarkConfig, args.overrides)
    summary = run_benchmark(cfg, log=lambda m: print(m, file=sys.stderr))
    with open(summary["tables"]["markdown"]) as fh:
        text = fh.read().rstrip()
    emit(args, summary, text)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import inspect

    from synthface.recognition.privacy.methods import PROTECTIONS

    rows = []
    for name in PROTECTIONS.names():
        cls = PROTECTIONS.get(name)
        doc = (inspect.getdoc(cls) or "").splitlines()[0]
        rows.append({"name": name, "summary": doc})
    emit(args, rows, "\n".join(f"{r['name']:<18} {r['summary']}" for r in rows))
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    sub = add_group(groups, "privacy", "privacy-preserving recognition: methods and benchmark")
    b = sub.add_parser(
        "benchmark",
        help="train, verify and attack every method of a configs/privacy/*.yaml; one table",
        description="Run the privacy benchmark in this process (the privacy-benchmark flow "
        "does the same steps under Prefect: synthface flows run privacy-benchmark CONFIG). "
        "Finished steps are skipped on a rerun.",
    )
    b.add_argument("config", metavar="CONFIG")
    b.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable)",
    )
    add_json_flag(b)
    b.set_defaults(func=cmd_benchmark)
    m = sub.add_parser("methods", help="list the registered protections")
    add_json_flag(m)
    m.set_defaults(func=cmd_methods)
