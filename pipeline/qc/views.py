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
    num_samples: int = 0
    dataset_config_hash: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_labels", {old: new for new, old in enumerate(self.identities)})

    def keep(self, key: str) -> bool:
        return key not in self.excluded_samples and int(key[:8]) in self._labels

    def label(self, identity: int) -> int:
        return self._labels[identity]

    def select(self, sample: dict) -> bool:
        """Predicate for WebDataset ``.select`` over the shard readers' sample dicts."""
        return self.keep(sample["__key__"])

    @property
    def num_identities(self) -> int:
        return len(self.identities)

    def relabel(self, sample: dict) -> dict:
        """The sample with its label moved to the view's contiguous label."""
        try:
            return {**sample, "label": self._labels[int(sample["label"])]}
        except KeyError:
            raise ShardError(
                f"sample {sample.get('__key__')!r}: label {sample['label']} is not an identity "
                f"of view {self.name!r}"
            ) from None


def load_view(dataset_dir: str | Path, name: str) -> View:
    path = view_path(dataset_dir, name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        have = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.is_dir() else []
        raise InputError(
            f"{path}: no such view (the dataset has: {', '.join(have) or 'no views'})"
        ) from None
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: unreadable view ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != VIEW_FORMAT:
        raise ShardError(f"{path}: not a synthface view (format != {VIEW_FORMAT!r})")
    return View(
        name=data["name"],
        split=data["split"],
        identities=tuple(int(i) for i in data["identities"]),
        excluded_samples=frozenset(data["excluded_samples"]),
        num_samples=int(data.get("num_samples", 0)),
        dataset_config_hash=data.get("dataset_config_hash"),
    )


def open_view(dataset_dir: str | Path, name: str, *, split: str, config_hash: str | None) -> View:
    """A view checked against the dataset it is applied to.

    A view names its dataset by config hash: a view copied next to other shards (or left
    behind when the dataset was regenerated under another config) would otherwise remap
    labels onto the wrong people without any error.
    """
    view = load_view(dataset_dir, name)
    path = view_path(dataset_dir, name)
    if view.split != split:
        raise InputError(f"{path}: a view of split {view.split!r}, not {split!r}")
    if config_hash and view.dataset_config_hash and view.dataset_config_hash != config_hash:
        raise InputError(
            f"{path}: made for dataset config {view.dataset_config_hash[:12]}, but "
            f"{Path(dataset_dir) / 'dataset.json'} has {config_hash[:12]} (stale view; rewrite it)"
        )
    return view


def _view_json(dataset_dir: str | Path, name: str) -> dict:
    load_view(dataset_dir, name)  # the one place that turns a bad file into one line
    return json.loads(view_path(dataset_dir, name).read_text())


def write_identity_view(
    dataset_dir: str | Path,
    name: str,
    *,
    split: str = "train",
    excluded_identities: dict[int, list[str]],
    base: str | None = None,
    criteria: dict,
) -> dict:
    """A view of any finished dataset that leaves out whole identities (with reasons).

    ``base`` names a view to start from (e.g. ``qc``): what it leaves out stays out, so a
    hold-out view of a generated set is still QC-filtered. Counts and the config hash
    come from ``dataset.json``, so the view fits the dataset it is written into.
    """
    from synthface.pipeline.shards.manifest import load_identity_array, split_manifest

    if base is not None and base == name:
        raise InputError(f"view {name!r}: cannot be its own base view")
    entry = split_manifest(dataset_dir, split)
    counts = [int(c) for c in load_identity_array(dataset_dir, "identity_counts", split)]
    total = len(counts)
    excluded = {int(i): list(r) for i, r in excluded_identities.items()}
    bad = [i for i in excluded if not 0 <= i < total]
    if bad:
        raise InputError(f"identity {bad[0]}: {dataset_dir} has identities 0..{total - 1}")
    samples: dict[str, list[str]] = {}
    if base is not None:
        open_view(dataset_dir, base, split=split, config_hash=entry.get("config_hash"))
        prior = _view_json(dataset_dir, base)
        for i, reasons in prior["excluded_identities"].items():
            excluded.setdefault(int(i), [])[:0] = [f"{base}:{r}" for r in reasons]
        samples = {
            k: [f"{base}:{r}" for r in v]
            for k, v in prior["excluded_samples"].items()
            if int(k[:8]) not in excluded
        }
    return write_view(
        dataset_dir,
        name,
        split=split,
        config_hash=entry.get("config_hash", ""),
        num_identities=total,
        identity_counts=counts,
        excluded_identities=excluded,
        excluded_samples=samples,
        criteria={**criteria, **({"base_view": base} if base else {})},
    )
