"""``synthface shards inspect``: what a dataset holds, from the manifest and identity counts.

Reads no shard: inspecting a terabyte dataset is instant; ``verify`` is the one that reads.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from synthface.pipeline.errors import ShardError
from synthface.pipeline.shards.manifest import load_identity_array, load_manifest


def inspect_dataset(dataset_dir: str | Path, *, split: str | None = None) -> dict:
    manifest = load_manifest(dataset_dir)
    out = {
        "dataset": str(dataset_dir),
        "format": manifest["format"],
        "schema_version": manifest["schema_version"],
        "code_version": manifest.get("code_version"),
        "splits": {},
    }
    names = [split] if split else sorted(manifest["splits"])
    for name in names:
        entry = manifest["splits"].get(name)
        if entry is None:
            raise ShardError(
                f"{dataset_dir}: no split {name!r} (has: {', '.join(sorted(manifest['splits']))})"
            )
        counts = load_identity_array(dataset_dir, "identity_counts", name)
        hist = Counter(counts.tolist())
        out["splits"][name] = {
            "identities": entry["num_identities"],
            "images": entry["num_samples"],
            "shards": entry["num_shards"],
            "bytes": entry["bytes"],
            "config_hash": entry["config_hash"],
            "images_per_identity": {
                "min": int(counts.min()),
                "max": int(counts.max()),
                "mean": round(float(counts.mean()), 3),
                "median": float(np.median(counts)),
                "histogram": {str(k): hist[k] for k in sorted(hist)},
            },
            "arrays": {
                k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in entry["arrays"].items()
            },
        }
    return out


def format_inspection(info: dict) -> str:
    lines = [
        f"{info['dataset']}  ({info['format']} v{info['schema_version']}, code {info['code_version']})"
    ]
    for name, s in info["splits"].items():
        per = s["images_per_identity"]
        lines.append(
            f"split {name}: {s['identities']} identities, {s['images']} images, "
            f"{s['shards']} shards, {s['bytes'] / 1e6:.1f} MB"
        )
        lines.append(
            f"  images per identity: min {per['min']}  median {per['median']:g}  mean {per['mean']}  max {per['max']}"
        )
        top = max(per["histogram"].values())
        for count, ids in per["histogram"].items():
            bar = "#" * max(1, round(30 * ids / top))
            lines.append(f"  {count:>6} images: {ids:>8} identities {bar}")
        arrays = ", ".join(
            f"{k} {v['dtype']}{tuple(v['shape'])}" for k, v in sorted(s["arrays"].items())
        )
        lines.append(f"  identity arrays: {arrays}")
    return "\n".join(lines)
