"""The ``synthface`` command.

Command groups are found through the ``synthface.cli`` entry-point group: each
entry is a ``register(subparsers)`` function in the package that owns the work,
so this module never imports the heavy stages (torch, diffusers) until a command
of theirs runs. A package may also add a command to a group that another package owns
through ``synthface.cli.commands`` (entry name ``GROUP.COMMAND``, e.g. recognition's
``shards.annotate``): the group's owner never imports the package that adds it, which
keeps the layering (``pipeline`` imports nothing above it). Exit codes: 0 ok, 1 failure,
2 usage (argparse's own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import entry_points
from typing import Any

from synthface.pipeline import __version__
from synthface.pipeline.errors import SynthfaceError
from synthface.pipeline.limits import (
    DEFAULT_MAX_IMAGE_PIXELS,
    PIXELS_ENV,
    set_max_image_pixels,
)
from synthface.pipeline.termination import exit_on_sigterm

ENTRY_POINT_GROUP = "synthface.cli"
COMMAND_ENTRY_POINT_GROUP = "synthface.cli.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthface",
        description="Synthetic face datasets for face recognition.",
        epilog="Add --debug anywhere for a traceback on errors, --quiet for no progress bars.",
    )
    parser.add_argument("--version", action="version", version=f"synthface {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars (they show only on a terminal)"
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        metavar="N",
        help=f"refuse images above N pixels (default {DEFAULT_MAX_IMAGE_PIXELS}, or ${PIXELS_ENV})",
    )
    groups = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        ep.load()(groups)
    for ep in sorted(entry_points(group=COMMAND_ENTRY_POINT_GROUP), key=lambda e: e.name):
        group, _, command = ep.name.partition(".")
        ep.load()(group_commands(groups, group, ep.name), command)
    return parser


def group_commands(
    groups: argparse._SubParsersAction, group: str, where: str = "?"
) -> argparse._SubParsersAction:
    """The sub-command parsers of the existing group ``synthface GROUP``."""
    parser = groups.choices.get(group)
    for action in [] if parser is None else parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError(f"{COMMAND_ENTRY_POINT_GROUP} entry {where!r}: no command group {group!r}")


def emit(args: argparse.Namespace, data: Any, text: str | None = None) -> None:
    """Print ``data`` as JSON under ``--json``, else ``text`` (or a JSON dump)."""
    if getattr(args, "json", False) or text is None:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text)


def add_group(
    groups: argparse._SubParsersAction, name: str, help: str
) -> argparse._SubParsersAction:
    """Add a command group ``synthface NAME`` and return its sub-command parsers."""
    parser = groups.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest="command", metavar="COMMAND", required=True)


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def _leave_process_group() -> None:
    """Shut down a torch.distributed group a command joined (``accelerate launch``).

    Left to interpreter exit, gloo's teardown can race the other ranks' and abort a
    finished rank with SIGABRT ("terminate called without an active exception"), which
    fails the whole launch. No barrier here: after an error the other ranks may be gone.
    """
    dist = sys.modules.get("torch.distributed")  # never import torch just for this
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if "--quiet" in argv:
        from synthface.pipeline.progress import QUIET_ENV

        os.environ[QUIET_ENV] = "1"  # child processes (Prefect, Dask workers) inherit it
    argv = [a for a in argv if a not in ("--debug", "--quiet")]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = debug
    try:
        if args.max_image_pixels is not None:
            set_max_image_pixels(args.max_image_pixels)
        with exit_on_sigterm():
            try:
                code = args.func(args)
            finally:
                _leave_process_group()
    except SynthfaceError as exc:
        if debug:
            raise
        print(f"synthface: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error of ours. Point stdout at
        # devnull so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("synthface: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the CLI is the last line of defence
        if debug:
            raise
        print(
            f"synthface: error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
