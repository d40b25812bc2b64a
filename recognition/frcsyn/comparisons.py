"""FRCSyn comparison files: ``{dataset}_comparison.txt`` (``relpath1;relpath2`` per line)
and, for our own evaluation trees, ``{dataset}_ground_truth.txt`` (``1``/``0`` per line).

The organisers ship comparison lists without labels; the project's procedural world
writes the labels next to them so the same code can score and rank locally. Relative
paths are checked before any image is opened: an absolute path or ``..`` component in
a comparison file is refused instead of reading outside the image folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from synthface.pipeline.errors import InputError

__all__ = ["ComparisonSet", "comparison_path", "list_datasets", "read_comparisons"]


@dataclass
class ComparisonSet:
    dataset: str
    path: Path
    sha256: str
    first: list[str]
    second: list[str]
    labels: np.ndarray | None  # bool per comparison, when ground truth exists

    def __len__(self) -> int:
        return len(self.first)

    def images(self) -> list[str]:
        """Unique relative paths, in first-seen order."""
        return list(dict.fromkeys(p for pair in zip(self.first, self.second) for p in pair))


def comparison_path(comparisons_dir, dataset: str) -> Path:
    return Path(comparisons_dir) / f"{dataset}_comparison.txt"


def list_datasets(comparisons_dir) -> list[str]:
    d = Path(comparisons_dir)
    if not d.is_dir():
        raise InputError(f"{d}: comparisons folder does not exist")
    return sorted(p.name[: -len("_comparison.txt")] for p in d.glob("*_comparison.txt"))


def _safe_relpath(path: Path, lineno: int, rel: str) -> str:
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise InputError(f"{path}:{lineno}: unsafe or empty image path {rel!r}")
    return rel


def read_comparisons(comparisons_dir, dataset: str, *, need_labels: bool = False) -> ComparisonSet:
    path = comparison_path(comparisons_dir, dataset)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read comparison file ({exc.strerror or exc})") from None
    first, second = [], []
    for lineno, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(";")
        if len(parts) != 2:
            raise InputError(f"{path}:{lineno}: expected 'relpath1;relpath2', got {line!r}")
        first.append(_safe_relpath(path, lineno, parts[0].strip()))
        second.append(_safe_relpath(path, lineno, parts[1].strip()))
    if not first:
        raise InputError(f"{path}: no comparisons")
    labels = None
    gt = Path(comparisons_dir) / f"{dataset}_ground_truth.txt"
    if gt.is_file():
        vals = [v.strip() for v in gt.read_text().splitlines() if v.strip()]
        bad = next((i for i, v in enumerate(vals) if v not in ("0", "1")), None)
        if bad is not None:
            raise InputError(f"{gt}:{bad + 1}: label must be 1 or 0, got {vals[bad]!r}")
        if len(vals) != len(first):
            raise InputError(
                f"{gt}: {len(vals)} labels for {len(first)} comparisons in {path.name}"
            )
        labels = np.array([v == "1" for v in vals], dtype=bool)
    elif need_labels:
        raise InputError(f"{gt}: ground truth needed here but missing")
    return ComparisonSet(
        dataset=dataset,
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        first=first,
        second=second,
        labels=labels,
    )
