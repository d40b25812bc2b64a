"""Refuse an output folder that lies inside one of the command's input folders.

Writing ``from-folder faces/ faces/shards`` would add a folder to the identity tree being
read (and the next run would read its own output); exporting a dataset into itself or
training into the dataset directory mixes foreign files into a verified dataset. Every
such command calls :func:`check_output_outside` before it writes anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from synthface.pipeline.errors import InputError


def _real(path: str | os.PathLike) -> Path:
    # resolve() follows symlinks and works for paths that do not exist yet
    return Path(path).expanduser().resolve()


def check_output_outside(out: str | os.PathLike, out_name: str, **inputs) -> None:
    """``InputError`` if ``out`` is one of ``inputs`` (name -> folder) or lies inside one."""
    target = _real(out)
    for name, folder in inputs.items():
        if folder is None:
            continue
        src = _real(folder)
        if target == src or target.is_relative_to(src):
            raise InputError(
                f"{out_name} {out} is inside {name} {folder}; choose an output folder outside it"
            )
