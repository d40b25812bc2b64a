"""Verification protocols over evaluation identities of the procedural world.

Six analogues of the benchmarks face-recognition papers report:

=========  ==========================================================  ================
protocol   image A / image B of a pair                                  impostor partner
=========  ==========================================================  ================
lfw        default style prior / default style prior                    any identity
cfp-fp     frontal (|yaw| < 10) / profile (55 <= |yaw| <= 75)           any identity
agedb      young (base age - 15) / 30 years older                       any identity
rof        no occluder / sunglasses or face mask (alternating)          any identity
bupt       default / default, folds balanced over the 8 groups          same group
lowres     default / default seen at 1/4 of the side, scaled back up   any identity
=========  ==========================================================  ================

``lowres`` (TinyFace/SCface-like surveillance resolution) renders image B at the full
size, then reduces it to ``LOW_RES_FRACTION`` of the side (box filter, like a small
sensor) and enlarges it back (bilinear), so every image of the protocol has one size.

Each fold holds ``pairs_per_fold`` genuine pairs (the two images of fresh
identities) followed by as many impostor pairs (image A of one identity with
image B of another from the same fold, a cyclic derangement), like LFW's
``pairs.txt``; folds are contiguous and identity-disjoint. Identities come from
the *eval* seed stream at a per-protocol offset, so protocols never share
identities with each other, with ``make_world_dataset(split="eval")`` (below
10 million identities) or with any training set.

Outputs in ``OUT``: ``{protocol}.bin`` (insightface layout, via
``synthface.pipeline.formats.verification_bin.write_bin``), the FRCSyn-style tree
``images/<relpath>`` with ``comparisons/{protocol}_comparison.txt`` (one
``relpath1;relpath2`` line per comparison) and ``comparisons/{protocol}_ground_truth.txt``
(``1``/``0`` per line), and ``{protocol}_pairs.json`` (per-pair fold, identities,
groups and attributes) written last.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.errors import InputError
from synthface.pipeline.world.coefficients import StyleConditions, sample_identity
from synthface.pipeline.world.dataset import IMAGE_EXTS, WORLD_VERSION, render_images
from synthface.pipeline.world.groups import GROUP_NAMES, NUM_GROUPS
from synthface.pipeline.world.render import check_size

PROTOCOLS = ("lfw", "cfp-fp", "agedb", "rof", "bupt", "lowres")
LOW_RES_FRACTION = 0.25  # lowres: image B's side before it is scaled back up
IDENTITY_OFFSET = 10_000_000  # eval identities of protocol p start at (p + 1) * IDENTITY_OFFSET
SPLIT = "eval"


def check_protocols(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        expanded = list(PROTOCOLS) if name == "all" else [name]
        for p in expanded:
            if p not in PROTOCOLS:
                raise InputError(
                    f"--protocol {p!r}: unknown protocol (known: {', '.join(PROTOCOLS)}, all)"
                )
            if p not in out:
                out.append(p)
    if not out:
        raise InputError("--protocol: give at least one protocol")
    return out


def _conditions(
    protocol: str, coeffs: dict, k: int
) -> tuple[StyleConditions | None, StyleConditions | None]:
    if protocol == "cfp-fp":
        return StyleConditions(yaw_abs=(0.0, 10.0)), StyleConditions(yaw_abs=(55.0, 75.0))
    if protocol == "agedb":
        young = float(np.clip(coeffs["base_age"] - 15.0, 16.0, 45.0))
        return StyleConditions(age=young), StyleConditions(age=young + 30.0)
    if protocol == "rof":
        occ = "mask" if k % 2 else "sunglasses"
        return StyleConditions(occluder="none"), StyleConditions(occluder=occ)
    return None, None


def low_resolution(image: np.ndarray, fraction: float = LOW_RES_FRACTION) -> np.ndarray:
    """``image`` reduced to ``fraction`` of its side (box filter) and enlarged back (bilinear)."""
    from PIL import Image

    h, w = image.shape[:2]
    small = (max(4, round(w * fraction)), max(4, round(h * fraction)))
    pil = Image.fromarray(image).resize(small, Image.BOX)
    return np.asarray(pil.resize((w, h), Image.BILINEAR))


def _fold_identities(protocol: str, fold: int, pairs_per_fold: int) -> list[int]:
    """Identity indices (eval stream) used by one fold; bupt folds are group-balanced."""
    base = (PROTOCOLS.index(protocol) + 1) * IDENTITY_OFFSET + fold * pairs_per_fold
    ids = list(range(base, base + pairs_per_fold))
    if protocol != "bupt":
        return ids
    # round-robin groups (group = identity % NUM_GROUPS) -> sort by group so each group
    # is a contiguous block; the derangement then stays inside a group
    return sorted(ids, key=lambda i: (i % NUM_GROUPS, i))


def _partners(protocol: str, ids: list[int], rng: np.random.Generator) -> list[int]:
    """Impostor partner position for each genuine position: a cyclic shift (no fixed points)."""
    n = len(ids)
    if protocol != "bupt":
        shift = int(rng.integers(1, n))
        return [(k + shift) % n for k in range(n)]
    partners = [0] * n
    start = 0
    while start < n:
        g = ids[start] % NUM_GROUPS
        end = start
        while end < n and ids[end] % NUM_GROUPS == g:
            end += 1
        m = end - start
        shift = int(rng.integers(1, m))
        for k in range(m):
            partners[start + k] = start + (k + shift) % m
        start = end
    return partners


def _relpath(protocol: str, identity: int, slot: int, ext: str) -> str:
    if protocol == "bupt":
        return f"{GROUP_NAMES[identity % NUM_GROUPS]}/{identity:08d}/{slot:04d}.{ext}"
    return f"{protocol}/{identity:08d}/{slot:04d}.{ext}"


def make_protocol(
    out_dir: str | Path,
    protocol: str,
    *,
    folds: int = 10,
    pairs_per_fold: int = 300,
    size: int = 112,
    seed: int = 0,
    ext: str = "jpg",
    batch: int = 256,
) -> dict:
    """Write one protocol's ``.bin``, image tree and comparison files; returns a summary."""
    from synthface.pipeline.formats.verification_bin import write_bin
    from synthface.pipeline.shards import encode_image

    (protocol,) = check_protocols([protocol])
    size = check_size(size)
    if ext not in IMAGE_EXTS:
        raise InputError(f"--ext {ext!r}: must be one of {', '.join(IMAGE_EXTS)}")
    if not isinstance(folds, int) or folds < 1:
        raise InputError(f"--folds {folds!r}: must be a positive integer")
    need = 2 * NUM_GROUPS if protocol == "bupt" else 2
    if not isinstance(pairs_per_fold, int) or pairs_per_fold < need:
        raise InputError(
            f"--pairs-per-fold {pairs_per_fold!r}: {protocol} needs at least {need} "
            "(impostors pair different identities of one fold"
            + (", within each group)" if protocol == "bupt" else ")")
        )
    out = Path(out_dir)
    rng = np.random.default_rng(
        np.random.SeedSequence(int(seed), spawn_key=(99, PROTOCOLS.index(protocol)))
    )

    # plan: per fold, identities, their two images' conditions, and impostor partners
    jobs: list[tuple[int, int, StyleConditions | None]] = []
    pairs: list[dict] = []
    for fold in range(folds):
        ids = _fold_identities(protocol, fold, pairs_per_fold)
        for k, identity in enumerate(ids):
            coeffs = sample_identity(seed, identity, SPLIT)
            cond_a, cond_b = _conditions(protocol, coeffs, k)
            jobs += [(identity, 0, cond_a), (identity, 1, cond_b)]
        partners = _partners(protocol, ids, rng)
        for same in (True, False):
            for k, identity in enumerate(ids):
                other = identity if same else ids[partners[k]]
                pairs.append({"fold": fold, "same": same, "a": (identity, 0), "b": (other, 1)})

    rel: dict[tuple[int, int], str] = {}
    data: dict[tuple[int, int], bytes] = {}
    metas: dict[tuple[int, int], dict] = {}
    for identity, index, image, meta in render_images(
        jobs, seed=seed, split=SPLIT, size=size, batch=batch
    ):
        key = (identity, index)
        if protocol == "lowres" and index == 1:
            image = low_resolution(image)
            meta["attributes"]["resolution"] = round(size * LOW_RES_FRACTION)
        rel[key] = _relpath(protocol, identity, index, ext)
        data[key] = encode_image(image, ext)
        metas[key] = meta
        # never a partial file under the final name; one os.sync() below, not one per file
        atomic_write_bytes(out / "images" / rel[key], data[key], sync=False)
    if hasattr(os, "sync"):
        os.sync()  # one flush for the whole tree instead of thousands of fsyncs

    comparisons = "".join(f"{rel[p['a']]};{rel[p['b']]}\n" for p in pairs)
    truth = "".join(f"{int(p['same'])}\n" for p in pairs)
    atomic_write_bytes(out / "comparisons" / f"{protocol}_comparison.txt", comparisons.encode())
    atomic_write_bytes(out / "comparisons" / f"{protocol}_ground_truth.txt", truth.encode())
    images = [data[key] for p in pairs for key in (p["a"], p["b"])]
    write_bin(out / f"{protocol}.bin", images, [p["same"] for p in pairs])

    summary = {
        "protocol": protocol,
        "world_version": WORLD_VERSION,
        "seed": int(seed),
        "size": size,
        "ext": ext,
        "folds": folds,
        "pairs_per_fold": pairs_per_fold,
        "num_pairs": len(pairs),
        "num_genuine": sum(p["same"] for p in pairs),
        "num_images": len(data),
        "identity_stream": SPLIT,
        "identity_range": [min(i for i, _ in data), max(i for i, _ in data)],
        "bin": f"{protocol}.bin",
        "comparison": f"comparisons/{protocol}_comparison.txt",
        "ground_truth": f"comparisons/{protocol}_ground_truth.txt",
        "pairs": [
            {
                "fold": p["fold"],
                "same": p["same"],
                "a": rel[p["a"]],
                "b": rel[p["b"]],
                "identity_a": p["a"][0],
                "identity_b": p["b"][0],
                "group_a": metas[p["a"]]["group"],
                "group_b": metas[p["b"]]["group"],
                "attributes_a": metas[p["a"]]["attributes"],
                "attributes_b": metas[p["b"]]["attributes"],
            }
            for p in pairs
        ],
    }
    text = json.dumps(summary, indent=1, sort_keys=True) + "\n"
    atomic_write_bytes(out / f"{protocol}_pairs.json", text.encode())
    return {k: v for k, v in summary.items() if k != "pairs"}


def make_pairs(
    out_dir: str | Path,
    protocols: Sequence[str],
    *,
    folds: int = 10,
    pairs_per_fold: int = 300,
    size: int = 112,
    seed: int = 0,
    ext: str = "jpg",
) -> list[dict]:
    """Write several protocols into one output folder (they share its image tree)."""
    names = check_protocols(protocols)
    return [
        make_protocol(
            out_dir, p, folds=folds, pairs_per_fold=pairs_per_fold, size=size, seed=seed, ext=ext
        )
        for p in names
    ]
