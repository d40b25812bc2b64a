"""Training samples for the generators: identity-set shards or image folders.

Both sources yield the shards reader's sample dict (``image`` uint8 HxWx3, ``label``,
``meta``, ``embedding``) as an endless, deterministic stream: epoch ``e`` is a seeded
permutation (map-style sources) or the shards reader with ``set_epoch(e)``. Resuming at
sample ``k`` of the stream therefore reproduces exactly the batches an uninterrupted run
would have seen (map-style sources jump there; streams re-read and drop ``k`` samples).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthface.generators.config import GeneratorConfig
from synthface.pipeline.errors import InputError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class ImageFolder(Sequence):
    """``root/<identity>/<image>`` -> sample dicts; identities numbered in sorted order.

    Optional ``<image>.json`` next to an image is its ``meta`` (e.g. ``attributes``).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: image folder not found")
        classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.items: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            for f in sorted((self.root / name).iterdir()):
                if f.suffix.lower() in IMAGE_EXTS:
                    self.items.append((f, label))
        if not self.items:
            raise InputError(f"{self.root}: no images found in identity sub-folders")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[override]
        import json

        from synthface.pipeline.limits import open_image

        path, label = self.items[i]
        image = np.asarray(open_image(path))
        side = path.with_suffix(path.suffix + ".json")
        meta = json.loads(side.read_text()) if side.is_file() else {}
        return {
            "__key__": str(path),
            "image": image,
            "label": label,
            "meta": meta,
            "embedding": None,
        }


def sample_stream(
    source: Sequence[dict[str, Any]] | Any, *, seed: int, skip: int = 0
) -> Iterator[dict[str, Any]]:
    """Endless deterministic stream over ``source`` starting at stream position ``skip``."""
    if isinstance(source, Sequence):
        n = len(source)
        if n == 0:
            raise InputError("training data is empty")
        epoch, offset = divmod(skip, n)
        while True:
            order = np.random.default_rng([seed, epoch]).permutation(n)
            for i in order[offset:]:
                yield source[int(i)]
            epoch, offset = epoch + 1, 0
    # a shards pipeline with set_epoch
    epoch, dropped = 0, 0
    while True:
        source.set_epoch(epoch)
        got = 0
        for s in source:
            got += 1
            if dropped < skip:
                dropped += 1
                continue
            yield s
        if got == 0:
            raise InputError("training data is empty")
        epoch += 1


def open_source(cfg: GeneratorConfig):
    """The configured training data (``data.source`` / ``data.path``)."""
    d = cfg.data
    if d.path is None:
        raise InputError("data.path is not set in the generator config")
    if d.source == "folder":
        return ImageFolder(d.path)
    from synthface.pipeline.shards import make_webdataset

    return make_webdataset(
        d.path, shuffle_shards=True, buffer=d.shuffle_buffer, decode=True, seed=cfg.train.seed
    )


def attribute_row(meta: dict, names: Sequence[str], key: str) -> list[float]:
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    row = []
    for name in names:
        if not isinstance(attrs, dict) or name not in attrs:
            raise InputError(f"sample {key!r}: meta['attributes'] has no {name!r}")
        value = float(attrs[name])
        if not np.isfinite(value):
            raise InputError(f"sample {key!r}: attribute {name!r} is {value}")
        row.append(value)
    return row
