"""Landmarks given in a text file, for images whose faces are already located.

One face per line: ``RELPATH x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 [score]``, the numbers separated
by whitespace or commas (``RELPATH`` may contain spaces), ``#`` starting a comment. ``RELPATH`` is the image's path inside the
source folder (``identity/image.jpg``, forward slashes); points are pixels of that image in
insightface's order (image-left eye, image-right eye, nose tip, image-left and image-right
mouth corner). Several lines for one image are several faces; an image without a line has
none. This is the layout of IJB's ``*_name_5pts_score.txt`` with the folder prefix added.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.pipeline.faces.select import Face

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_LINE = re.compile(rf"^(?P<path>.+?)[\s,]+(?P<nums>(?:{_NUM}[\s,]+){{9,10}}{_NUM})$")
_SPLIT = re.compile(r"[\s,]+")


def read_sidecar(path: str | os.PathLike) -> dict[str, list[Face]]:
    """``{relpath: [Face, ...]}``; ``InputError`` naming the file and line of a bad entry."""
    p = Path(path)
    faces: dict[str, list[Face]] = {}
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: no such landmarks file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: unreadable landmarks file ({exc})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{p}: line {lineno}"
        m = _LINE.match(line)
        if m is None:
            raise InputError(
                f"{where}: expected RELPATH and 10 coordinates (+ optional score): {line[:80]!r}"
            )
        values = [float(v) for v in _SPLIT.split(m.group("nums"))]
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"{where}: coordinates must be finite")
        rel = m.group("path").strip().replace("\\", "/")
        rel = rel[2:] if rel.startswith("./") else rel
        score = values[10] if len(values) == 11 else None
        lmk = np.array(values[:10], dtype=np.float64).reshape(5, 2)
        faces.setdefault(rel, []).append(Face(landmarks=lmk, score=score))
    if not faces:
        raise InputError(f"{p}: no landmark lines")
    return faces
