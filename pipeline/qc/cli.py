"""``synthface qc ...``: re-filter a generated dataset under other QC thresholds"""

from __future__ import annotations

import argparse

from synthface.pipeline.cli import add_group, add_json_flag, emit


def cmd_view(args: argparse.Namespace) -> int:
    from synthface.pipeline.config import apply_overrides, validate_config
    from synthface.pipeline.errors import ConfigError
    from synthface.pipeline.qc.config import QCConfig
    from synthface.pipeline.qc.refilter import write_filtered_view
    from synthface.pipeline.shards import split_manifest

    entry = split_manifest(args.dataset, args.split)
    made_with = dict(entry["config"].get("qc") or {})  # the thresholds the dataset was made with
    # the models it was made with are recorded by hash (``*_sha256``), not by path
    data = {k: v for k, v in made_with.items() if not k.endswith("_sha256")}
    data["view"] = args.name
    if args.gallery:
        data["gallery"] = args.gallery
    elif made_with.get("gallery_sha256") and not data.get("gallery"):
        raise ConfigError(
            f"{args.dataset}: made with a leak gallery (sha256 "
            f"{made_with['gallery_sha256'][:12]}); pass it again with --gallery so the "
            "re-audit checks leaks too"
        )
    qc = validate_config(apply_overrides(data, args.set), QCConfig, "qc", overrides=args.set)
    out = write_filtered_view(args.dataset, qc, split=args.split)
    text = (
        f"{out['view']}: {out['num_identities']} identities, {out['num_samples']} samples kept "
        f"({len(out['excluded_identities'])} identities, {len(out['excluded_samples'])} samples left out)"
    )
    emit(args, {k: v for k, v in out.items() if k != "summary"}, text)
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    sub = add_group(groups, "qc", "quality and privacy control of generated identity sets")
    c = sub.add_parser(
        "view",
        help="write views/NAME.json under other thresholds (shards are never changed)",
        description="Re-audit a generated dataset from its QC sidecars and write a filtered view.",
    )
    c.add_argument("dataset", help="dataset directory written by generate-synthetic")
    c.add_argument("--name", required=True, help="view name: views/NAME.json")
    c.add_argument("--gallery", help="real-identity embeddings .npy for the leakage audit")
    c.add_argument("--split", default="train")
    c.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="QC threshold, e.g. --set min_identity_consistency=0.5 (repeatable)",
    )
    add_json_flag(c)
    c.set_defaults(func=cmd_view)
