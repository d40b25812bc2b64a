"""Raw tar members of one sample -> the reader's sample dict (shared by every reader)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from synthface.pipeline.errors import ShardError
from synthface.pipeline.limits import quote
from synthface.pipeline.shards.sample import decode_image, npy_from_bytes


def image_member(raw: dict[str, Any]) -> str:
    for ext in ("jpg", "png", "jpeg"):  # .jpeg: webdataset's TarWriter encodes it too
        if ext in raw:
            return ext
    raise ShardError(
        f"{raw.get('__url__', '?')}: sample {quote(raw.get('__key__'))}: no .jpg or .png member"
    )


def to_sample(raw: dict[str, Any], decode: bool = True) -> dict[str, Any]:
    """``{"__key__", "image", "label", "meta", "embedding"}`` from a raw member dict.

    Any malformed member is a ``ShardError``/``InputError`` naming the shard and the key.
    """
    key = raw["__key__"]
    where = f"{raw.get('__url__', '?')}: sample {quote(key)}"
    ext = image_member(raw)
    image = raw[ext]
    if "cls" not in raw:  # e.g. a WebDataset whose labels are .txt captions
        members = ", ".join(f".{k}" for k in sorted(raw) if not k.startswith("__"))
        raise ShardError(
            f"{where}: no .cls label member (has {members}); labels are read from .cls"
        )
    try:
        label = int(raw["cls"])
        meta = json.loads(raw["json"]) if "json" in raw else {}
    except (KeyError, ValueError, RecursionError) as exc:
        raise ShardError(f"{where}: bad .cls/.json member ({quote(str(exc), 120)})") from None
    if not isinstance(meta, dict):
        raise ShardError(f"{where}: .json member is not an object")
    embedding = npy_from_bytes(raw["npy"], f"{where}: .npy") if "npy" in raw else None
    return {
        "__key__": key,
        "image": decode_image(image, where) if decode else bytes(image),
        "label": label,
        "meta": meta,
        "embedding": embedding,
    }


def collate_samples(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader ``collate_fn`` for sample dicts: stacks images/labels, keeps meta as a list.

    torch's default collate cannot take ``embedding=None`` nor metadata dicts whose keys
    differ between samples, hence this one.
    """
    import torch

    images = [b["image"] for b in batch]
    out: dict[str, Any] = {
        "__key__": [b["__key__"] for b in batch],
        "label": torch.tensor([b["label"] for b in batch], dtype=torch.long),
        "meta": [b["meta"] for b in batch],
    }
    if all(isinstance(im, np.ndarray) for im in images):
        out["image"] = torch.from_numpy(np.stack(images))
    else:
        out["image"] = images
    embs = [b["embedding"] for b in batch]
    out["embedding"] = None if any(e is None for e in embs) else torch.from_numpy(np.stack(embs))
    return out
