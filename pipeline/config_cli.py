"""``synthface config validate|show``."""

from __future__ import annotations

import argparse

import yaml

from synthface.pipeline.cli import add_json_flag, emit
from synthface.pipeline.config import config_hash, load_any_config


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="YAML config file")
    p.add_argument("--kind", help="config kind (default: the name of the file's folder)")
    p.add_argument(
        "--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override a field"
    )
    add_json_flag(p)


def register(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser("config", help="validate and show typed configs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    v = sub.add_parser("validate", help="check a config file; exit 1 with every problem")
    _add_common(v)
    v.set_defaults(func=cmd_validate)
    s = sub.add_parser("show", help="print the resolved config, defaults included")
    _add_common(s)
    s.set_defaults(func=cmd_show)


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = load_any_config(args.file, args.kind, args.overrides)
    digest = config_hash(cfg)
    emit(
        args, {"file": args.file, "valid": True, "hash": digest}, f"{args.file}: ok ({digest[:12]})"
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    cfg = load_any_config(args.file, args.kind, args.overrides)
    data = cfg.model_dump(mode="json")
    emit(args, data, yaml.safe_dump(data, sort_keys=False).rstrip())
    return 0
