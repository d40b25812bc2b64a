"""Validation sets for the training loop: decoded once, embedded by every rank, in batches.

Sets come from :func:`synthface.recognition.evaluation.bin_cache.open_decoded_bin`: the
local main process of each machine decodes a set into the cache while the others wait,
then every process opens the same memory map. A pass splits the 2N images into one
contiguous slice per process; each embeds its slice batch by batch and the slices are
gathered in rank order, so the main process scores the embeddings one process would have
computed (to the last bits of the device's arithmetic for other batch shapes) in a 1/P
share of the time, and no rank idles at a barrier while another one embeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthface.recognition.config import TrainConfig
from synthface.recognition.evaluation.bin_cache import DecodedBin, open_decoded_bin

__all__ = ["cache_dir", "embed_images", "embed_sharded", "open_sets", "rank_slice"]


def cache_dir(cfg: TrainConfig) -> Path:
    """``validation.cache_dir``, or ``<train.output_dir>/validation_cache``."""
    if cfg.validation.cache_dir:
        return Path(cfg.validation.cache_dir)
    return Path(cfg.train.output_dir) / "validation_cache"


def open_sets(cfg: TrainConfig, accelerator: Any) -> list[DecodedBin]:
    """Every ``validation.sets`` entry, decoded by one process per machine, opened by all.

    A set that cannot be decoded raises on every process (the others are told to look
    at the main process's error), never leaves them waiting at a barrier.
    """
    from synthface.pipeline.errors import InputError

    root = cache_dir(cfg)
    builder = accelerator.is_local_main_process
    sets: list[DecodedBin] = []
    error: InputError | None = None
    if builder:
        try:
            sets = [open_decoded_bin(path, root) for path in cfg.validation.sets]
        except InputError as exc:
            error = exc
    if accelerator.num_processes > 1:
        failed = torch.tensor([error is not None], dtype=torch.int32, device=accelerator.device)
        if int(accelerator.reduce(failed, reduction="max")) and error is None:
            error = InputError(
                "validation.sets: a set could not be decoded on another process (see its error)"
            )
    if error is not None:
        raise error
    if not builder:
        sets = [open_decoded_bin(path, root, build=False) for path in cfg.validation.sets]
    return sets


def rank_slice(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of process ``rank``: contiguous ``ceil(n / world)`` slices, so
    only the last ranks are short and padding them keeps the gathered rows in order."""
    per = -(-n // world)
    return min(rank * per, n), min((rank + 1) * per, n)


@torch.no_grad()
def embed_images(
    backbone: torch.nn.Module, images: np.ndarray, cfg: TrainConfig, accelerator: Any
) -> torch.Tensor:
    """Flip-summed raw float32 embeddings (on the device) of uint8 N x H x W x 3 images,
    ``validation.batch_size`` at a time."""
    from synthface.recognition.training.data import to_model_input

    device = accelerator.device
    out = []
    bs = cfg.validation.batch_size
    for lo in range(0, len(images), bs):
        batch = torch.from_numpy(np.array(images[lo : lo + bs]))  # a writable copy of the map
        x = to_model_input(
            batch.to(device, non_blocking=device.type == "cuda"),
            cfg.model.input_size,
            channels_last=cfg.model.channels_last,
        )
        with accelerator.autocast():
            feats = backbone(x).float()
            if cfg.validation.flip:
                feats = feats + backbone(x.flip(-1)).float()
        out.append(feats)
    return torch.cat(out)


def embed_sharded(
    backbone: torch.nn.Module, images: np.ndarray, cfg: TrainConfig, accelerator: Any
) -> np.ndarray | None:
    """Every image's embedding (float64, in row order) on the main process; None elsewhere.

    Each process embeds its :func:`rank_slice`; the slices are padded to one length and
    gathered (a collective: every process must call this for every set).
    """
    n, world = len(images), accelerator.num_processes
    lo, hi = rank_slice(n, accelerator.process_index, world)
    if hi > lo:
        feats = embed_images(backbone, images[lo:hi], cfg, accelerator)
    else:  # more processes than images: embed one image only to learn the feature width
        feats = embed_images(backbone, images[:1], cfg, accelerator)[:0]
    if world > 1:
        per = -(-n // world)
        if feats.shape[0] < per:
            pad = feats.new_zeros((per - feats.shape[0], *feats.shape[1:]))
            feats = torch.cat([feats, pad])
        feats = accelerator.gather(feats.contiguous())[:n]
    if not accelerator.is_main_process:
        return None
    return feats.cpu().double().numpy()
