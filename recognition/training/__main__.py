"""``python -m synthface.recognition.training CONFIG [--set K=V] [--resume latest]``.

The same command as ``synthface recognition train``, importable as a module so that
``accelerate launch -m synthface.recognition.training`` can start one process per GPU.
"""

import argparse
import sys

from synthface.pipeline.errors import SynthfaceError
from synthface.recognition.cli import add_train_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synthface.recognition.training")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except SynthfaceError as exc:
        print(f"synthface: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
