"""``synthface config validate|show``."""

from __future__ import annotations

import argparse

import yaml

from synthface.pipeline.cli import add_json_flag, emit
from synthface.pipeline.config import (
    KIND_KEY,
    config_hash,
    infer_kind,
    load_any_config,
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file", help="YAML config file, or synthface:KIND/NAME.yaml for a shipped config"
    )
    p.add_argument(
        "--kind",
        help="config kind (default: the file's `kind:` key, else the name of its folder)",
    )
    p.add_argument(
        "--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override a field"
    )
    add_json_flag(p)


def register(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser("config", help="validate and show typed configs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    v = sub.add_parser(
        "validate",
        help="check a config file (fields, paths' form, cron and time zone); writes nothing",
    )
    _add_common(v)
    v.set_defaults(func=cmd_validate)
    s = sub.add_parser(
        "show",
        help="print the resolved config to stdout: `kind:` first, defaults included, "
        "relative paths made absolute; writes no file",
    )
    _add_common(s)
    s.set_defaults(func=cmd_show)


def cmd_validate(args: argparse.Namespace) -> int:
    kind = args.kind or infer_kind(args.file)
    cfg = load_any_config(args.file, kind, args.overrides)
    digest = config_hash(cfg)
    emit(
        args,
        {"file": args.file, "kind": kind, "valid": True, "hash": digest},
        f"{args.file}: ok ({kind}, {digest[:12]})",
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    kind = args.kind or infer_kind(args.file)
    cfg = load_any_config(args.file, kind, args.overrides)
    data = {KIND_KEY: kind, **cfg.model_dump(mode="json")}
    emit(args, data, yaml.safe_dump(data, sort_keys=False).rstrip())
    return 0
