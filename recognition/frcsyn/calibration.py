"""A calibration comparison tree from the user's own training shards.

FRCSyn allows a submission's decision threshold to come only from the training data of
its sub-task. ``calibration_from_shards`` turns identity shards into the tree that
``score_run`` reads (``images/<relpath>``, ``comparisons/{name}_comparison.txt`` and
``{name}_ground_truth.txt``): for each chosen identity one genuine pair (its last two
images in shard order) and one impostor pair (this identity's first-chosen image with
the second-chosen image of another identity, a seeded cyclic derangement, as the world's
protocols pair impostors). Images are copied byte for byte, never re-encoded.

The images should be *held out* from recognizer training when the threshold is meant
to reflect unseen images: the benchmark renders two extra images of its real training
identities for this. With your own data, hold whole identities out (``holdout`` or
``holdout_fraction``): the tree is built from them only, and a view
``views/<view>.json`` written into the dataset leaves them out, so a recognizer trained
with ``data.view: <view>`` never sees a calibration image and the threshold is chosen on
people it has never seen, as the evaluation's are. Without a hold-out the threshold
sees training images (which the rule permits). ``calibration.json`` is written last and
marks a complete tree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_write_bytes, atomic_write_json
from synthface.pipeline.errors import InputError

__all__ = ["CALIBRATION_FILE", "HOLDOUT_VIEW", "calibration_from_shards", "holdout_identities"]

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = "synthface-frcsyn-calibration"
HOLDOUT_VIEW = "frcsyn-train"
HOLDOUT_REASON = "frcsyn_calibration_holdout"


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


def holdout_identities(
    dataset_dir,
    *,
    split: str = "train",
    identities: list[int] | None = None,
    fraction: float | None = None,
    seed: int = 0,
    base_view: str | None = None,
) -> list[int]:
    """The identities to hold out: the ones named, or ``fraction`` of them drawn by ``seed``.

    Drawn from the identities the training would otherwise see (``base_view``'s, or all),
    so a hold-out of a QC-filtered set never spends its share on identities QC dropped.
    """
    from synthface.pipeline.qc.views import open_view
    from synthface.pipeline.shards import split_manifest

    if (identities is None) == (fraction is None):
        raise InputError("hold-out: give the identities or a fraction, not both or neither")
    entry = split_manifest(dataset_dir, split)
    total = int(entry.get("num_identities", 0))
    pool = list(range(total))
    if base_view is not None:
        view = open_view(dataset_dir, base_view, split=split, config_hash=entry.get("config_hash"))
        pool = list(view.identities)
    if identities is not None:
        chosen = sorted(set(int(i) for i in identities))
        outside = [i for i in chosen if i not in set(pool)]
        if outside:
            where = f"view {base_view!r}" if base_view else f"{dataset_dir} (0..{total - 1})"
            raise InputError(f"--holdout-identities: identity {outside[0]} is not in {where}")
    else:
        if not 0 < fraction < 1:
            raise InputError(f"--holdout-fraction {fraction}: must lie strictly between 0 and 1")
        count = round(fraction * len(pool))
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(4243,)))
        chosen = sorted(np.asarray(pool)[rng.choice(len(pool), size=count, replace=False)].tolist())
    if len(chosen) < 2:
        raise InputError(
            f"hold-out: {len(chosen)} identities; calibration needs at least 2 (impostor pairs)"
        )
    if len(pool) - len(chosen) < 2:
        raise InputError(
            f"hold-out: {len(chosen)} of {len(pool)} identities leaves fewer than 2 to train on"
        )
    return chosen


def calibration_from_shards(
    dataset_dir,
    out_dir,
    *,
    split: str = "train",
    name: str = "calibration",
    identities: int | None = None,
    seed: int = 0,
    holdout: list[int] | None = None,
    holdout_fraction: float | None = None,
    view: str = HOLDOUT_VIEW,
    base_view: str | None = None,
) -> dict:
    """Write the calibration tree; returns its summary (also ``OUT/calibration.json``).

    With ``holdout`` (identity numbers) or ``holdout_fraction``, the tree uses exactly the
    held-out identities and ``views/<view>.json`` (from ``base_view`` if given) is written
    into the dataset without them: train with ``data.view: <view>``.
    """
    from synthface.pipeline.qc.views import view_path, write_identity_view
    from synthface.pipeline.shards import iter_samples, split_manifest
    from synthface.pipeline.shards.manifest import load_manifest

    dataset_dir, out = Path(dataset_dir), Path(out_dir)
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"--name {name!r}: must be a plain file-name stem")
    entry = split_manifest(dataset_dir, split)
    total = int(entry.get("num_identities", 0))
    held = None
    if holdout is not None or holdout_fraction is not None:
        if identities is not None:
            raise InputError("--identities: with a hold-out the tree uses the held-out identities")
        held = holdout_identities(
            dataset_dir,
            split=split,
            identities=holdout,
            fraction=holdout_fraction,
            seed=seed,
            base_view=base_view,
        )
        view_path(dataset_dir, view)  # a bad name fails before any work
    elif base_view is not None:
        raise InputError("--base-view: only with --holdout-identities or --holdout-fraction")
    want = (total if identities is None else int(identities)) if held is None else len(held)
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
    if held is not None:
        source["holdout"] = {"identities": held, "view": view, "base_view": base_view}
    marker = out / CALIBRATION_FILE
    try:
        done = json.loads(marker.read_text())
        if done.get("source") == source and (
            held is None or view_path(dataset_dir, view).is_file()
        ):
            return done
    except (OSError, ValueError):
        pass
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(4242,)))
    if held is None:
        chosen = set(np.sort(rng.choice(total, size=want, replace=False)).tolist())
    else:
        chosen = set(held)
    pairs: list[tuple[str, str]] = []  # (a, b) relpaths per identity, in identity order
    samples_in = iter_samples(dataset_dir, split, decode=False)
    if base_view is not None:  # what the base view drops (QC duplicates, ...) is no pair either
        from synthface.pipeline.qc.views import load_view

        kept = load_view(dataset_dir, base_view)
        samples_in = (s for s in samples_in if kept.keep(s["__key__"]))
    for identity, samples in _identities(samples_in, chosen):
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
    if held is not None:
        written = write_identity_view(
            dataset_dir,
            view,
            split=split,
            excluded_identities={i: [HOLDOUT_REASON] for i in held},
            base=base_view,
            criteria={"frcsyn_calibration": {"tree": str(out), "name": name, "seed": int(seed)}},
        )
        summary["holdout"] = {
            "identities": held,
            "view": str(view_path(dataset_dir, view)),
            "train_identities": written["num_identities"],
            "train_samples": written["num_samples"],
        }
    atomic_write_json(marker, summary)
    return summary
