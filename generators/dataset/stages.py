"""The five named stages of one shard: conditions -> images -> QC -> samples -> write.

Each stage is a plain function of its inputs, so the order in which batches pass
through them, and the thread that runs them, cannot change a byte: ``shard.py`` samples
batch k+1 on the device while a helper thread runs QC and sample assembly of batch k.
Batches are whole identities, because QC scores an identity's images together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.generators.dataset.config import GenerateConfig
from synthface.generators.dataset.plan import ShardWork
from synthface.pipeline.qc import score_identity, write_shard_qc
from synthface.pipeline.qc.scores import IdentityScores
from synthface.pipeline.shards import Sample, encode_image, write_shard
from synthface.pipeline.shards.writer import ShardRecord

# What "batch_size: null" aims at: whole identities adding up to about this many images.
AUTO_BATCH_IMAGES = {"cpu": 32, "cuda": 128}


@dataclass(frozen=True)
class Batch:
    """Identities ``[first, stop)`` of a shard with their conditions and sampled images."""

    first: int
    stop: int
    conditions: dict[str, np.ndarray]
    images: np.ndarray  # uint8 (n, H, W, 3) at the stored size
    decided: list[dict]  # what the sampler decided per image (UIFace: its switch step)


def batch_plan(cfg: GenerateConfig, work: ShardWork, device: str) -> tuple[list[range], int]:
    """The shard's identities cut into batches of whole identities, and the sampler's
    batch size. Only speed and memory depend on it: each image is a function of its own
    (identity, attributes, seed)."""
    m = work.samples_per_identity
    size = cfg.generator.batch_size
    if size is None:
        per = max(1, AUTO_BATCH_IMAGES["cuda" if device.startswith("cuda") else "cpu"] // m)
        size = per * m
    else:
        per = max(1, size // m)
    stop = work.last_identity + 1
    return [range(a, min(a + per, stop)) for a in range(work.first_identity, stop, per)], size


def resolve_precision(requested: str, device: str) -> str:
    """``auto``: bf16 autocast on a GPU, fp32 on the CPU (where bf16 is slower)."""
    if requested != "auto":
        return requested
    return "bf16" if device.startswith("cuda") else "fp32"


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize; Pillow widens the filter by the scale factor when shrinking, so a
    downscale (uiface's 128 -> 112 px) is antialiased rather than sampled."""
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    from PIL import Image

    h, w = size
    return np.stack(
        [np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in images]
    )


# --------------------------------------------------------------------------- 1. conditions
def conditions(generator, anchors: np.ndarray, ids: range, work: ShardWork) -> dict:
    """Identity/attribute conditions and per-image seeds of identities ``ids``."""
    return generator.dataset_conditions(
        np.asarray(anchors[ids.start : ids.stop]),
        work.samples_per_identity,
        seed=work.seed,
        first_identity=ids.start,
    )


# --------------------------------------------------------------------------- 2. images
def images(
    generator, cfg: GenerateConfig, ids: range, cond: dict, *, batch_size: int, device: str
) -> Batch:
    """Sample the batch on the generator's device; resized to ``output.image_size`` here,
    so that what is stored is what QC scores."""
    n = len(ids) * cond["seeds"].shape[1]
    decided: list[dict] = []
    out = generator.generate(
        cond["identity"].reshape(n, -1),
        cond["attributes"].reshape(n, -1) if generator.attribute_names else None,
        cond["seeds"].reshape(n).tolist(),
        sampler=cfg.generator.sampler,
        steps=cfg.generator.steps,
        guidance_scale=cfg.generator.guidance_scale,
        id_guidance_scale=cfg.generator.id_guidance_scale,
        batch_size=batch_size,
        precision=resolve_precision(cfg.generator.precision, device),
        sampler_options=cfg.generator.sampler_options,
        sample_meta=decided,
    )
    if cfg.output.image_size is not None:
        out = resize(out, (cfg.output.image_size, cfg.output.image_size))
    return Batch(ids.start, ids.stop, cond, out, decided)


# --------------------------------------------------------------------------- 3. QC
def qc(producer, cfg: GenerateConfig, batch: Batch) -> tuple[np.ndarray, np.ndarray | None]:
    """QC embeddings (and SDD-FIQA quality when configured) of the batch's images."""
    emb = producer.embedder
    vectors = emb.embed(resize(batch.images, emb.input_size), batch_size=cfg.qc.batch_size)
    quality = None
    if producer.quality is not None:
        quality = producer.quality.score(batch.images, batch_size=cfg.qc.batch_size)
    return vectors, quality


# --------------------------------------------------------------------------- 4. samples
def _r(x: float, digits: int = 6) -> float:
    return round(float(x), digits)


def samples(
    cfg: GenerateConfig,
    generator,
    batch: Batch,
    vectors: np.ndarray,
    quality: np.ndarray | None,
    anchors: np.ndarray | None,
) -> tuple[list[IdentityScores], list[Sample]]:
    """Score each identity and encode each image with its metadata (``anchors``: the
    anchors when QC embeddings live in their space, else ``None``)."""
    cond = batch.conditions
    m = cond["seeds"].shape[1]
    attr_names = list(generator.attribute_names)
    scores, out = [], []
    for k, identity in enumerate(range(batch.first, batch.stop)):
        rows = slice(k * m, (k + 1) * m)
        per_sample, summary = score_identity(
            identity,
            vectors[rows],
            cfg.qc,
            anchor=None if anchors is None else np.asarray(anchors[identity]),
            quality=None if quality is None else quality[rows],
        )
        scores.append(summary)
        for j in range(m):
            i = k * m + j
            meta = {
                "generator": generator.name,
                "seed": int(cond["seeds"][k, j]),
                "condition_cos": _r(cond["cos"][k, j]),
                "qc": per_sample[j],
                **batch.decided[i],
            }
            if attr_names:
                meta["attributes"] = {
                    name: _r(cond["attributes"][k, j, t], 4) for t, name in enumerate(attr_names)
                }
            out.append(
                Sample(
                    identity=identity,
                    index=j,
                    image=encode_image(
                        batch.images[i], cfg.output.image_format, cfg.output.jpeg_quality
                    ),
                    ext=cfg.output.image_format,
                    meta=meta,
                    embedding=vectors[i] if cfg.output.store_embeddings else None,
                )
            )
    return scores, out


# --------------------------------------------------------------------------- 5. write
def write(
    dataset_dir: Path, work: ShardWork, scores: list[IdentityScores], shard_samples: list[Sample]
) -> ShardRecord:
    """QC sidecar first, then the tar: a shard that ``completed_shards`` vouches for
    always has its scores. Both are atomic."""
    write_shard_qc(dataset_dir, work.split, work.index, scores)
    return write_shard(dataset_dir, work.index, shard_samples, split=work.split)
