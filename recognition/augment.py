"""Training augmentations as batched tensor ops on the training device.

Aligned face crops keep their geometry, so every augmentation here keeps the face where
it is: a mirror image, a resolution drop (FAN's random-scale down/up sampling and
AdaFace's low-resolution augmentation), AdaFace's crop that blacks out everything but a
random box *in place*, and colour jitter. Running them on the batch after it reaches the
device keeps the data-loader workers doing only JPEG decoding, which is the bottleneck
on a fast GPU.

Per-sample sizes cannot share one ``interpolate`` call, so random scales are quantised
into a few levels and each level is one call on the samples that drew it.

All randomness comes from the ``generator`` argument; the training loop seeds it from
``(seed, global_step)`` so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from synthface.recognition.config import AugmentConfig

# Luma weights (ITU-R BT.601), as PIL's "L" conversion.
_LUMA = (0.299, 0.587, 0.114)
_LOW_RES_MODES = ("nearest", "bilinear", "area")


def _rand(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device)


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * _rand(n, gen)


def _chosen(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """Boolean mask selecting each sample with probability ``p``."""
    return _rand(n, gen) < p


def hflip(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    mask = _chosen(x.shape[0], p, gen).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def down_up(
    x: torch.Tensor,
    mask: torch.Tensor,
    level: torch.Tensor,
    scales: list[float],
    modes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resample selected samples to ``scales[level]`` of their side, then back to full size.

    ``modes`` (indices into ``_LOW_RES_MODES``) picks the down-sampling filter per sample;
    without it, down-sampling is antialiased bilinear (a plain blur-and-decimate).
    """
    h, w = x.shape[-2:]
    out = x.clone()
    mode_idx = modes if modes is not None else torch.full_like(level, -1)
    for lv in torch.unique(level[mask]).tolist():
        for md in torch.unique(mode_idx[mask & (level == lv)]).tolist():
            idx = torch.nonzero(mask & (level == lv) & (mode_idx == md)).flatten()
            size = (max(1, round(h * scales[lv])), max(1, round(w * scales[lv])))
            if size == (h, w):
                continue
            sub = x.index_select(0, idx)
            if md < 0:
                small = F.interpolate(sub, size=size, mode="bilinear", antialias=True)
            elif _LOW_RES_MODES[md] == "nearest":
                small = F.interpolate(sub, size=size, mode="nearest")
            elif _LOW_RES_MODES[md] == "area":
                small = F.interpolate(sub, size=size, mode="area")
            else:
                small = F.interpolate(sub, size=size, mode="bilinear", align_corners=False)
            back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
            out.index_copy_(0, idx, back)
    return out


def _levels(low: float, count: int) -> list[float]:
    """Bucket centres spanning ``[low, 1]``."""
    return [low + (1.0 - low) * (k + 0.5) / count for k in range(count)]


def random_scale(
    x: torch.Tensor, p: float, min_scale: float, levels: int, gen: torch.Generator
) -> torch.Tensor:
    n = x.shape[0]
    mask = _chosen(n, p, gen).to(x.device)
    level = (_rand(n, gen) * levels).long().clamp_(max=levels - 1).to(x.device)
    if not bool(mask.any()):
        return x
    return down_up(x, mask, level, _levels(min_scale, levels))


def low_resolution(
    x: torch.Tensor, p: float, min_side: float, levels: int, gen: torch.Generator
) -> torch.Tensor:
    n = x.shape[0]
    mask = _chosen(n, p, gen).to(x.device)
    level = (_rand(n, gen) * levels).long().clamp_(max=levels - 1).to(x.device)
    modes = (_rand(n, gen) * len(_LOW_RES_MODES)).long().clamp_(max=len(_LOW_RES_MODES) - 1)
    if not bool(mask.any()):
        return x
    return down_up(x, mask, level, _levels(min_side, levels), modes.to(x.device))


def crop_in_place(
    x: torch.Tensor,
    p: float,
    min_area: float,
    min_ratio: float,
    max_ratio: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Keep one random box per selected sample, zero (black) elsewhere."""
    n, _, h, w = x.shape
    mask = _chosen(n, p, gen)
    area = _uniform(n, min_area, 1.0, gen) * (h * w)
    log_ratio = _uniform(n, math.log(min_ratio), math.log(max_ratio), gen)
    ratio = torch.exp(log_ratio)
    bw = torch.sqrt(area * ratio).round().clamp(1, w)
    bh = torch.sqrt(area / ratio).round().clamp(1, h)
    top = (_rand(n, gen) * (h - bh + 1)).floor()
    left = (_rand(n, gen) * (w - bw + 1)).floor()
    dev = x.device
    rows = torch.arange(h, device=dev, dtype=torch.float32)[None, :, None]
    cols = torch.arange(w, device=dev, dtype=torch.float32)[None, None, :]
    top, left, bh, bw = (t.to(dev)[:, None, None] for t in (top, left, bh, bw))
    keep = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
    keep = keep | ~mask.to(dev)[:, None, None]
    return x * keep[:, None].to(x.dtype)


def photometric(
    x: torch.Tensor,
    p: float,
    brightness: float,
    contrast: float,
    saturation: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Brightness, contrast and saturation jitter; ``x`` is RGB in [0, 1]."""
    n = x.shape[0]
    mask = _chosen(n, p, gen)

    def factor(spread: float) -> torch.Tensor:
        f = _uniform(n, 1.0 - spread, 1.0 + spread, gen)
        return torch.where(mask, f, torch.ones_like(f)).to(x.device, x.dtype)[:, None, None, None]

    b, c, s = factor(brightness), factor(contrast), factor(saturation)
    luma = torch.tensor(_LUMA, device=x.device, dtype=x.dtype)[None, :, None, None]
    y = (x * b).clamp(0, 1)
    mean = (y * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    y = ((y - mean) * c + mean).clamp(0, 1)
    gray = (y * luma).sum(1, keepdim=True)
    y = ((y - gray) * s + gray).clamp(0, 1)
    return torch.where(mask.to(x.device)[:, None, None, None], y, x)


class Augmenter:
    """The configured augmentations in a fixed order: crop, low-res, scale, colour, flip."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    @property
    def active(self) -> bool:
        c = self.cfg
        return any(a.p > 0 for a in (c.flip, c.random_scale, c.crop, c.low_res, c.photometric))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``x``: float N x 3 x H x W RGB in [0, 1]; returns the same layout and range."""
        c = self.cfg
        if c.crop.p > 0:
            x = crop_in_place(x, c.crop.p, c.crop.min_area, c.crop.min_ratio, c.crop.max_ratio, gen)
        if c.low_res.p > 0:
            x = low_resolution(x, c.low_res.p, c.low_res.min_side, c.low_res.levels, gen)
        if c.random_scale.p > 0:
            x = random_scale(
                x, c.random_scale.p, c.random_scale.min_scale, c.random_scale.levels, gen
            )
        if c.photometric.p > 0:
            pc = c.photometric
            x = photometric(x, pc.p, pc.brightness, pc.contrast, pc.saturation, gen)
        if c.flip.p > 0:
            x = hflip(x, c.flip.p, gen)
        return x
