"""Filtered manifest views: ``views/<name>.json`` lists what QC leaves out, and why.

Filtering never deletes or rewrites shards. A view names the dataset it belongs to
(its config hash), the criteria, the excluded identities and samples with their
reasons, and the kept identities in order — their position is their new contiguous
class label, so a recognizer trained through a view still sees labels 0..C'-1.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.errors import InputError, ShardError

VIEWS_DIR = "views"
VIEW_FORMAT = "synthface-view"
VIEW_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def view_path(dataset_dir: str | Path, name: str) -> Path:
    if not VIEW_NAME_RE.match(name):
        raise InputError(f"view name {name!r} must match {VIEW_NAME_RE.pattern}")
    return Path(dataset_dir) / VIEWS_DIR / f"{name}.json"


def write_view(
    dataset_dir: str | Path,
    name: str,
    *,
    split: str,
    config_hash: str,
    num_identities: int,
    identity_counts: list[int],
    excluded_identities: dict[int, list[str]],
    excluded_samples: dict[str, list[str]],
    criteria: dict,
) -> dict:
    """Write the view atomically and return it."""
    kept = [i for i in range(num_identities) if i not in excluded_identities]
    dropped_samples = sum(identity_counts[i] for i in excluded_identities)
    view = {
        "format": VIEW_FORMAT,
        "schema_version": 1,
        "name": name,
        "split": split,
        "dataset_config_hash": config_hash,
        "criteria": criteria,
        "num_identities": len(kept),
        "num_samples": sum(identity_counts) - dropped_samples - len(excluded_samples),
        "identities": kept,
        "excluded_identities": {str(k): v for k, v in sorted(excluded_identities.items())},
        "excluded_samples": dict(sorted(excluded_samples.items())),
    }
    path = view_path(dataset_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(view, indent=1, sort_keys=True) + "\n").encode())
    return view


@dataclass(frozen=True)
class View:
    """A loaded view: ``keep(key)`` decides membership, ``label(identity)`` remaps labels."""

    name: str
    split: str
    identities: tuple[int, ...]
    excluded_samples: frozenset[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_labels", {old: new for new, old in enumerate(self.identities)})

    def keep(self, key: str) -> bool:
        return key not in self.excluded_samples and int(key[:8]) in self._labels

    def label(self, identity: int) -> int:
        return self._labels[identity]

    def select(self, sample: dict) -> bool:
        """Predicate for WebDataset ``.select`` over the shard readers' sample dicts."""
        return self.keep(sample["__key__"])


def load_view(dataset_dir: str | Path, name: str) -> View:
    path = view_path(dataset_dir, name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such view") from None
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: unreadable view ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != VIEW_FORMAT:
        raise ShardError(f"{path}: not a synthface view (format != {VIEW_FORMAT!r})")
    return View(
        name=data["name"],
        split=data["split"],
        identities=tuple(int(i) for i in data["identities"]),
        excluded_samples=frozenset(data["excluded_samples"]),
    )
