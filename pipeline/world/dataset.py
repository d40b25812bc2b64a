"""Labelled identity sets from the procedural world, written in the project's shard format.

``make_world_dataset`` plays the role of CASIA-WebFace: C virtual people x M images,
every image's ``.json`` carrying its group, pose/age/expression attributes, the
full ground-truth identity and style coefficients (so any image can be re-rendered
exactly with :func:`render_from_meta`) and the 5 alignment landmarks (``landmarks``, pixel
(x, y) in insightface's order; ``landmarks_visible``). Shards are planned up front from the counts
alone, completed shards are skipped on a re-run (resume), and every byte is a
function of the arguments: per-image generators never depend on batching.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.pipeline.world.coefficients import (
    IDENTITY_FIELDS,
    STYLE_FIELDS,
    StyleConditions,
    sample_identity,
    sample_style,
    stack,
    stream_of,
)
from synthface.pipeline.world.groups import GROUP_NAMES, NUM_GROUPS
from synthface.pipeline.world.render import check_size, render

WORLD_VERSION = 1  # bump when a change alters rendered pixels for the same arguments
MAX_PER_IDENTITY = 10000
IMAGE_EXTS = ("jpg", "png")
OCCLUDER_NAMES = {0: "none", 1: "glasses", 2: "sunglasses"}


def noise_seed(seed: int, split: str, identity: int, index: int) -> int:
    """Per-image key of the sensor-noise generator (independent of batching)."""
    ss = np.random.SeedSequence(
        int(seed), spawn_key=(stream_of(split), int(identity), 1 + int(index), 7)
    )
    return int(ss.generate_state(1, np.uint32)[0])


def occluder_name(style: Mapping[str, float]) -> str:
    if style["mask"] > 0:
        return "mask"
    return OCCLUDER_NAMES[int(style["glasses"])]


def sample_meta(
    identity_coeffs: Mapping[str, float],
    style: Mapping[str, float],
    *,
    seed: int,
    split: str,
    identity: int,
    index: int,
    size: int,
) -> dict:
    """The per-sample ``.json`` record: group, attributes and ground-truth coefficients."""
    group = int(identity_coeffs["group"])
    return {
        "group": group,
        "group_name": GROUP_NAMES[group],
        "attributes": {
            "yaw": style["yaw"],
            "pitch": style["pitch"],
            "roll": style["roll"],
            "age": style["age"],
            "expression": max(style["smile"], style["mouth_open"]),
            "smile": style["smile"],
            "mouth_open": style["mouth_open"],
            "occluder": occluder_name(style),
            "blur": style["blur"],
            "noise": style["noise"],
            "jpeg": style["jpeg"],
        },
        "identity_coeffs": dict(identity_coeffs),
        "style_coeffs": dict(style),
        "world": {
            "version": WORLD_VERSION,
            "seed": int(seed),
            "split": split,
            "identity": int(identity),
            "index": int(index),
            "size": int(size),
        },
    }


def render_from_meta(metas: Sequence[Mapping], size: int | None = None, *, degrade: bool = True):
    """Re-render samples from their ``.json`` metadata (exactly, at the recorded size)."""
    if not metas:
        raise InputError("render_from_meta: no samples given")
    try:
        idc = stack([m["identity_coeffs"] for m in metas], IDENTITY_FIELDS)
        sty = stack([m["style_coeffs"] for m in metas], STYLE_FIELDS)
        w = [m["world"] for m in metas]
        seeds = [noise_seed(x["seed"], x["split"], x["identity"], x["index"]) for x in w]
        size = int(size or w[0]["size"])
    except (KeyError, TypeError) as exc:
        raise InputError(
            f"render_from_meta: not procedural-world metadata (missing {exc})"
        ) from None
    return render(idc, sty, size, degrade=degrade, noise_seeds=np.array(seeds))


def check_counts(identities: int, per_identity: int) -> None:
    if not isinstance(identities, int | np.integer) or identities < 1:
        raise InputError(f"--identities {identities!r}: must be a positive integer")
    if not isinstance(per_identity, int | np.integer) or not 1 <= per_identity <= MAX_PER_IDENTITY:
        raise InputError(
            f"--per-identity {per_identity!r}: must be an integer from 1 to {MAX_PER_IDENTITY}"
        )


def render_images(
    jobs: Sequence[tuple[int, int, StyleConditions | None]],
    *,
    seed: int,
    split: str,
    size: int,
    batch: int = 256,
) -> Iterator[tuple[int, int, np.ndarray, dict]]:
    """Render ``(identity, index, conditions)`` jobs in batches; yields (identity, index, HxWx3, meta).

    Identity coefficients are cached per identity within a batch only, so memory
    stays bounded whatever the number of jobs.
    """
    for lo in range(0, len(jobs), batch):
        part = jobs[lo : lo + batch]
        cache: dict[int, dict[str, float]] = {}
        ids, styles = [], []
        for identity, index, cond in part:
            if identity not in cache:
                cache[identity] = sample_identity(seed, identity, split)
            ids.append(cache[identity])
            styles.append(sample_style(seed, identity, index, cache[identity], split, cond))
        seeds = np.array([noise_seed(seed, split, i, j) for i, j, _ in part])
        out = render(
            stack(ids, IDENTITY_FIELDS), stack(styles, STYLE_FIELDS), size, noise_seeds=seeds
        )
        for k, (identity, index, _) in enumerate(part):
            meta = sample_meta(
                ids[k], styles[k], seed=seed, split=split, identity=identity, index=index, size=size
            )
            meta["landmarks"] = np.round(out.landmarks[k].astype(np.float64), 3).tolist()
            meta["landmarks_visible"] = out.landmarks_visible[k].tolist()
            yield identity, index, out.image[k], meta


def make_world_dataset(
    out_dir: str | Path,
    *,
    identities: int,
    per_identity: int,
    size: int = 64,
    seed: int = 0,
    split: str = "train",
    ext: str = "jpg",
    max_samples_per_shard: int = 10000,
    batch: int = 256,
) -> dict:
    """Write ``identities x per_identity`` procedural faces as a shard dataset; returns the manifest.

    ``split`` selects the identity seed stream ("train" or "eval"), which are
    disjoint by construction, and names the shards. Re-running with the same
    arguments skips completed shards and reproduces the same bytes.
    """
    from synthface.pipeline.shards import (
        Sample,
        begin_dataset,
        completed_shards,
        encode_image,
        finalize_dataset,
        plan_shards,
        write_shard,
    )

    check_counts(identities, per_identity)
    size = check_size(size)
    stream_of(split)
    if ext not in IMAGE_EXTS:
        raise InputError(f"--ext {ext!r}: must be one of {', '.join(IMAGE_EXTS)}")
    identities, per_identity = int(identities), int(per_identity)
    config = {
        "kind": "world",
        "world_version": WORLD_VERSION,
        "identities": identities,
        "per_identity": per_identity,
        "size": size,
        "seed": int(seed),
        "split": split,
        "ext": ext,
        "max_samples_per_shard": int(max_samples_per_shard),
    }
    out_dir = Path(out_dir)
    begin_dataset(out_dir, config=config, split=split)
    plans = plan_shards([per_identity] * identities, max_samples=max_samples_per_shard)
    done = completed_shards(out_dir, split=split)

    def samples(first: int, last: int) -> Iterator[Sample]:
        jobs = [(i, j, None) for i in range(first, last + 1) for j in range(per_identity)]
        for identity, index, image, meta in render_images(
            jobs, seed=seed, split=split, size=size, batch=batch
        ):
            yield Sample(identity, index, encode_image(image, ext), ext, meta)

    for plan in plans:
        if plan.index in done:
            continue
        write_shard(
            out_dir, plan.index, samples(plan.first_identity, plan.last_identity), split=split
        )

    coeffs = np.array(
        [[sample_identity(seed, i, split)[f] for f in IDENTITY_FIELDS] for i in range(identities)],
        dtype=np.float64,
    )
    groups = coeffs[:, IDENTITY_FIELDS.index("group")].astype(np.int64)
    extra = {
        "world": {
            "version": WORLD_VERSION,
            "identity_fields": list(IDENTITY_FIELDS),
            "style_fields": list(STYLE_FIELDS),
            "groups": list(GROUP_NAMES),
            "num_groups": NUM_GROUPS,
            "identity_stream": split,
        }
    }
    return finalize_dataset(
        out_dir,
        config=config,
        num_classes=identities,
        identity_arrays={"identity_coeffs": coeffs, "groups": groups},
        split=split,
        extra=extra,
    )
