"""Benchmark data stages: real data (world or yours), equal-size real subset, real + synthetic.

Every function writes into the stage directory it is given and returns a small result
(paths and counts); resume inside a stage comes from the writers themselves (the world
and generation skip completed shards). Copies are byte for byte: no image is re-encoded
unless two sources differ in size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from synthface.pipeline.errors import InputError

EVAL_DIR = "protocols"


def dataset_identity(path: str | Path, split: str = "train") -> dict:
    """What a finished dataset *is*, independent of its path: its manifest hash, counts and
    the sha256 of its shards (photos re-ingested with the same options are another set)."""
    import hashlib

    from synthface.pipeline.shards import split_manifest

    entry = split_manifest(path, split)
    shards = "\n".join(str(s.get("sha256")) for s in entry.get("shards", []))
    return {
        "config_hash": entry.get("config_hash"),
        "num_identities": int(entry.get("num_identities", 0)),
        "num_samples": int(entry.get("num_samples", 0)),
        "shards_sha256": hashlib.sha256(shards.encode()).hexdigest(),
    }


def file_sha256(path: str | Path) -> str:
    from synthface.pipeline.atomic import file_sha256 as sha256_and_size

    return sha256_and_size(path)[0]


def tree_identity(tree: str | Path) -> dict[str, str]:
    """sha256 of every comparison and ground-truth file of an FRCSyn tree."""
    comp = Path(tree) / "comparisons"
    if not comp.is_dir():
        raise InputError(f"real.tree: {tree}: no comparisons/ folder")
    return {p.name: file_sha256(p) for p in sorted(comp.glob("*.txt"))}


# --------------------------------------------------------------------------- world data
def world_set(out: Path, *, identities: int, per_identity: int, size: int, seed: int) -> dict:
    from synthface.pipeline.world import make_world_dataset

    make_world_dataset(
        out, identities=identities, per_identity=per_identity, size=size, seed=seed, split="train"
    )
    return {"path": str(out), **dataset_identity(out)}


def world_protocols(out: Path, *, names, folds: int, pairs_per_fold: int, size: int, seed: int):
    """The world's verification protocols: ``.bin`` files and the FRCSyn tree in ``out``."""
    from synthface.pipeline.world.protocols import check_protocols, make_pairs

    names = check_protocols(names)
    make_pairs(out, names, folds=folds, pairs_per_fold=pairs_per_fold, size=size, seed=seed)
    return {
        "bins": {p: str(out / f"{p}.bin") for p in names},
        "tree": str(out),
        "protocols": names,
    }


def world_holdout(
    out: Path, *, identities: int, first_index: int, size: int, seed: int, count: int = 2
) -> dict:
    """``count`` more images of the first ``identities`` training identities (never trained on).

    Image ``first_index + j`` of identity i is drawn from the same per-image stream as the
    training images, so these are new photos of the same people: what an FRCSyn threshold
    may be calibrated on.
    """
    from synthface.pipeline.shards import DatasetWriter, Sample, encode_image
    from synthface.pipeline.world.dataset import WORLD_VERSION, render_images

    config = {
        "kind": "world-holdout",
        "world_version": WORLD_VERSION,
        "identities": identities,
        "first_index": first_index,
        "count": count,
        "size": size,
        "seed": seed,
    }
    jobs = [(i, first_index + j, None) for i in range(identities) for j in range(count)]
    with DatasetWriter(out, config=config) as writer:
        for identity, index, image, meta in render_images(
            jobs, seed=seed, split="train", size=size
        ):
            writer.add(Sample(identity, index - first_index, encode_image(image), "jpg", meta))
        writer.close()
    return {"path": str(out), **dataset_identity(out)}


def calibration_tree(out: Path, holdout: str, *, identities: int, seed: int) -> dict:
    from synthface.recognition.frcsyn.calibration import calibration_from_shards

    info = calibration_from_shards(holdout, out, identities=identities, seed=seed)
    return {"tree": str(out), "num_genuine": info["num_genuine"]}


# --------------------------------------------------------------------------- copies
def _raw_samples(path: str | Path) -> Iterator[dict]:
    from synthface.pipeline.shards import iter_samples

    yield from iter_samples(path, decode=False)


def _ext(data: bytes) -> str:
    from synthface.pipeline.shards.sample import sniff_image_ext

    return sniff_image_ext(data) or "jpg"


def _image_size(path: str | Path) -> tuple[int, int]:
    import io

    from PIL import Image

    first = next(_raw_samples(path), None)
    if first is None:
        raise InputError(f"{path}: dataset holds no samples")
    with Image.open(io.BytesIO(first["image"])) as im:
        return im.size[1], im.size[0]


def _resized(data: bytes, size: tuple[int, int], ext: str) -> bytes:
    import io

    from PIL import Image

    from synthface.pipeline.shards import encode_image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if (im.size[1], im.size[0]) == size:
            return data
        im = im.resize((size[1], size[0]), Image.BILINEAR)
        return encode_image(np.asarray(im), ext)


def real_subset(out: Path, source: str, *, num_images: int, per_identity: int) -> dict:
    """The real baseline's training set: as many images as a synthetic set, same shape.

    Identities in shard order, each contributing its first ``per_identity`` images, until
    ``num_images`` are taken (the last identity may contribute fewer).
    """
    from synthface.pipeline.shards import DatasetWriter, Sample

    available = dataset_identity(source)
    if available["num_samples"] < num_images:
        raise InputError(
            f"real data {source}: {available['num_samples']} images, the budget needs "
            f"{num_images} for the equal-size real baseline"
        )
    config = {
        "kind": "benchmark-real-subset",
        "source": available,
        "num_images": num_images,
        "per_identity": per_identity,
    }
    taken, label, last, per = 0, -1, None, 0
    with DatasetWriter(out, config=config) as writer:
        for s in _raw_samples(source):
            if taken >= num_images:
                break
            if s["label"] != last:
                last, per = s["label"], 0
                label += 1
            if per >= per_identity:
                continue
            writer.add(Sample(label, per, s["image"], _ext(s["image"]), s["meta"], s["embedding"]))
            per += 1
            taken += 1
        writer.close()
    return {"path": str(out), **dataset_identity(out)}


def view_counts(dataset: str | Path, view: str) -> dict:
    """What a recognizer trained through ``views/<view>.json`` sees: its identities and images."""
    from synthface.pipeline.qc.views import open_view
    from synthface.pipeline.shards import split_manifest

    v = open_view(dataset, view, split="train", config_hash=split_manifest(dataset)["config_hash"])
    return {"num_identities": v.num_identities, "num_samples": v.num_samples, "view": view}


def merge_sets(out: Path, real: str, synthetic: str, *, view: str | None = None) -> dict:
    """Real identities 0..R-1, then the synthetic ones R..R+S-1 (FRCSyn's x.3 setting).

    Synthetic images of another size are resized to the real images' size (training
    needs one image size per dataset). ``view``: the synthetic set's samples are those
    of its ``views/<view>.json``, relabelled to the view's 0..S-1.
    """
    from synthface.pipeline.qc.views import open_view
    from synthface.pipeline.shards import DatasetWriter, Sample, split_manifest

    size = _image_size(real)
    other = _image_size(synthetic)
    config = {
        "kind": "benchmark-real-plus-synthetic",
        "real": dataset_identity(real),
        "synthetic": dataset_identity(synthetic),
        "size": list(size),
        **({"synthetic_view": view} if view else {}),
    }
    chosen = None
    if view is not None:
        chosen = open_view(
            synthetic, view, split="train", config_hash=split_manifest(synthetic)["config_hash"]
        )
    offset = 0
    with DatasetWriter(out, config=config) as writer:
        for part, resize in ((real, False), (synthetic, other != size)):
            first = offset
            for s in _raw_samples(part):
                if part == synthetic and chosen is not None:
                    if not chosen.keep(s["__key__"]):
                        continue
                    s = chosen.relabel(s)
                ext = _ext(s["image"])
                data = _resized(s["image"], size, ext) if resize else s["image"]
                meta = {k: v for k, v in s["meta"].items() if k not in ("identity", "index")}
                meta["source"] = "real" if part == real else "synthetic"
                label = first + s["label"]
                index = int(s["meta"].get("index", 0))
                writer.add(Sample(label, index, data, ext, meta))
                offset = max(offset, label + 1)
        writer.close()
    return {"path": str(out), **dataset_identity(out)}


def bins_identity(bins: list[str]) -> dict[str, str]:
    return {Path(b).stem: file_sha256(b) for b in bins}
