"""``synthface benchmark ...``: the paper protocol over registered generators.

``benchmark synthetic`` runs the ``benchmark-synthetic`` flow in this process (ephemeral
Prefect API unless ``PREFECT_API_URL`` is set), or with ``--no-prefect`` the same stages
as plain functions (``synthface.generators.benchmark.run.run_benchmark``).
"""

from __future__ import annotations

import argparse

from synthface.pipeline.cli import add_group, add_json_flag, emit


def cmd_synthetic(args: argparse.Namespace) -> int:
    from synthface.generators.benchmark.config import load_benchmark_config

    cfg = load_benchmark_config(args.config, args.set)
    if args.no_prefect:
        from synthface.generators.benchmark.run import run_benchmark

        summary = run_benchmark(cfg)
        out = {
            "report": summary["report"],
            "mean_accuracy": summary["mean_accuracy"],
            "gap_to_real": summary["gap_to_real"],
            "stages": summary["stages"],
        }
    else:
        from synthface.flows.defaults import prepare_prefect_env

        prepare_prefect_env()
        from synthface.flows.benchmark import benchmark_synthetic

        out = benchmark_synthetic(config=cfg)
    st = out["stages"]
    lines = [f"{len(st['executed'])} stages run, {len(st['skipped'])} found complete"]
    for name, acc in out["mean_accuracy"].items():
        row = out["gap_to_real"].get(name, {})
        gap = row.get("mean")
        lines.append(
            f"  {name:24s} mean accuracy {acc:6.2f} %"
            + ("" if gap is None else f"   gap to {row.get('reference', 'real')} {gap:+.2f} points")
        )
    lines.append(f"report: {out['report']['markdown']}")
    emit(args, out, "\n".join(lines))
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    sub = add_group(groups, "benchmark", "judge generators by the paper protocol")
    c = sub.add_parser(
        "synthetic",
        help="train on each generator's synthetic identities, verify on held-out real ones",
        description=(
            "Real data -> each listed generator trained (or loaded) -> the same identity "
            "budget generated -> the same recognizer recipe, once per seed, on each "
            "synthetic set, on as many real images, on all real images and on real + "
            "synthetic -> every protocol, FRCSyn, the gap to the reference row, the judge's "
            "distance to real faces and the face gate -> OUTPUT_DIR/report/. Stages are content-addressed: a re-run skips "
            "finished ones, adding a generator runs only its stages."
        ),
    )
    c.add_argument("--config", required=True, help="configs/benchmark/*.yaml")
    c.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    c.add_argument("--no-prefect", action="store_true", help="run the stages as plain functions")
    add_json_flag(c)
    c.set_defaults(func=cmd_synthetic)
