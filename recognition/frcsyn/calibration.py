"""A calibration comparison tree from the user's own training shards.

FRCSyn allows a submission's decision threshold to come only from the training data of
its sub-task. ``calibration_from_shards`` turns identity shards into the tree that
``score_run`` reads (``images/<relpath>``, ``comparisons/{name}_comparison.txt`` and
``{name}_ground_truth.txt``): for each chosen identity one genuine pair (its last two
images in shard order) and one impostor pair (this identity's first-chosen image with
the second-chosen image of another identity, a seeded cyclic derangement, as the world's
protocols pair impostors). Images are copied byte for byte, never re-encoded.

The images should be *held out* from recognizer training when the threshold is meant
to reflect unseen images of known people: the benchmark renders two extra images of its
real training identities for this; with your own data, keep each identity's last two
images out of training or accept that the threshold sees training images (which the
rule permits). ``calibration.json`` is written last and marks a complete tree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_write_bytes, atomic_write_json
from synthface.pipeline.errors import InputError

__all__ = ["CALIBRATION_FILE", "calibration_from_shards"]

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = "synthface-frcsyn-calibration"


def _ext(data: bytes, key: str) -> str:
    from synthface.pipeline.shards.sample import sniff_image_ext

    ext = sniff_image_ext(data)
    if ext is None:
        raise InputError(f"sample {key!r}: image is neither JPEG nor PNG")
    return ext


def _identities(samples: Iterator[dict], chosen: set[int]) -> Iterator[tuple[int, list[dict]]]:
    """(identity, its samples) for the chosen identities, one identity buffered at a time."""
    current, buf = None, []
    for s in samples:
        lab = int(s["label"])
        if lab != current:
            if current in chosen and buf:
                yield current, buf
            current, buf = lab, []
        if lab in chosen:
            buf.append(s)
    if current in chosen and buf:
        yield current, buf


def calibration_from_shards(
    dataset_dir,
    out_dir,
    *,
    split: str = "train",
    name: str = "calibration",
    identities: int | None = None,
    seed: int = 0,
) -> dict:
    """Write the calibration tree; returns its summary (also ``OUT/calibration.json``)."""
    from synthface.pipeline.shards import iter_samples, split_manifest
    from synthface.pipeline.shards.manifest import load_manifest

    dataset_dir, out = Path(dataset_dir), Path(out_dir)
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"--name {name!r}: must be a plain file-name stem")
    entry = split_manifest(dataset_dir, split)
    total = int(entry.get("num_identities", 0))
    want = total if identities is None else int(identities)
    if want < 2:
        raise InputError(f"--identities {identities!r}: need at least 2 identities")
    if total < want:
        raise InputError(
            f"{dataset_dir}: split {split!r} has {total} identities, {want} were asked for"
        )
    source = {
        "dataset": str(dataset_dir),
        "split": split,
        "config_hash": load_manifest(dataset_dir).get("config_hash"),
        "identities": want,
        "seed": int(seed),
        "name": name,
    }
    marker = out / CALIBRATION_FILE
    try:
        done = json.loads(marker.read_text())
        if done.get("source") == source:
            return done
    except (OSError, ValueError):
        pass
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(4242,)))
    chosen = set(np.sort(rng.choice(total, size=want, replace=False)).tolist())
    pairs: list[tuple[str, str]] = []  # (a, b) relpaths per identity, in identity order
    for identity, samples in _identities(iter_samples(dataset_dir, split, decode=False), chosen):
        if len(samples) < 2:
            continue
        rel = []
        for slot, s in enumerate(samples[-2:]):
            data = s["image"]
            path = f"{name}/{identity:08d}/{slot:04d}.{_ext(data, s['__key__'])}"
            atomic_write_bytes(out / "images" / path, data)
            rel.append(path)
        pairs.append((rel[0], rel[1]))
    n = len(pairs)
    if n < 2:
        raise InputError(
            f"{dataset_dir}: only {n} of the chosen identities have 2 or more images; "
            "calibration needs genuine and impostor pairs"
        )
    shift = int(rng.integers(1, n))
    first = [a for a, _ in pairs] + [pairs[k][0] for k in range(n)]
    second = [b for _, b in pairs] + [pairs[(k + shift) % n][1] for k in range(n)]
    truth = [1] * n + [0] * n
    comparisons = "".join(f"{a};{b}\n" for a, b in zip(first, second))
    atomic_write_bytes(out / "comparisons" / f"{name}_comparison.txt", comparisons.encode())
    atomic_write_bytes(
        out / "comparisons" / f"{name}_ground_truth.txt", "".join(f"{t}\n" for t in truth).encode()
    )
    summary = {
        "format": CALIBRATION_FORMAT,
        "source": source,
        "tree": str(out),
        "dataset": name,
        "identities_used": n,
        "num_genuine": n,
        "num_impostor": n,
        "comparison": f"comparisons/{name}_comparison.txt",
        "ground_truth": f"comparisons/{name}_ground_truth.txt",
    }
    atomic_write_json(marker, summary)
    return summary
