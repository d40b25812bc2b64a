"""Contact sheet of the procedural world: identities (rows) x styles (columns).

Optional map rows show, for the first identity's styles, the MorphFace-style
conditions the renderer produces alongside each image: albedo, shading and
camera-space normals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.pipeline.world.coefficients import (
    IDENTITY_FIELDS,
    STYLE_FIELDS,
    sample_identity,
    sample_style,
    stack,
)
from synthface.pipeline.world.dataset import noise_seed
from synthface.pipeline.world.groups import GROUP_NAMES
from synthface.pipeline.world.render import check_size, render

LABEL_WIDTH = 96


def contact_sheet(
    *,
    identities: int = 8,
    styles: int = 8,
    size: int = 112,
    seed: int = 0,
    split: str = "train",
    maps: bool = True,
    labels: bool = True,
) -> np.ndarray:
    """Render the sheet as an HxWx3 uint8 array (identity i is the i-th of ``split``)."""
    if identities < 1 or styles < 1:
        raise InputError(f"sheet needs >= 1 identity and style (got {identities} x {styles})")
    size = check_size(size)
    ids, sts, seeds = [], [], []
    for i in range(identities):
        idc = sample_identity(seed, i, split)
        for j in range(styles):
            ids.append(idc)
            sts.append(sample_style(seed, i, j, idc, split))
            seeds.append(noise_seed(seed, split, i, j))
    out = render(
        stack(ids, IDENTITY_FIELDS), stack(sts, STYLE_FIELDS), size, noise_seeds=np.array(seeds)
    )
    rows = [list(out.image[i * styles : (i + 1) * styles]) for i in range(identities)]
    names = [GROUP_NAMES[int(ids[i * styles]["group"])] for i in range(identities)]
    if maps:
        m = out.mask[:styles, ..., None]
        albedo = out.albedo[:styles]
        shading = np.clip(out.shading[:styles] / 1.2, 0, 1)
        normal = (out.normal[:styles] * 0.5 + 0.5) * m
        for name, arr in (("albedo", albedo), ("shading", shading), ("normals", normal)):
            rows.append(list((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)))
            names.append(f"id 0 {name}")
    grid = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    if not labels:
        return grid
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (grid.shape[1] + LABEL_WIDTH, grid.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (LABEL_WIDTH, 0))
    draw = ImageDraw.Draw(canvas)
    for r, name in enumerate(names):
        draw.text((4, r * size + size // 2 - 6), name, fill=(0, 0, 0))
    return np.asarray(canvas)


def write_sheet(path: str | Path, **kwargs) -> Path:
    """Render the contact sheet and write it as PNG (atomically)."""
    from synthface.pipeline.atomic import atomic_write_bytes
    from synthface.pipeline.shards import encode_image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"{path}: the contact sheet is written as PNG; use a .png name")
    atomic_write_bytes(path, encode_image(contact_sheet(**kwargs), "png"))
    return path
