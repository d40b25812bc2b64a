"""The models a worker keeps loaded across the shards it produces, pooled per process.

Models are loaded once per concurrently running shard, not once per shard: threads never
share a model, because some generators (UIFace) swap the UNet's attention processors
while sampling. A process that generates again with the same models (the next run of a
notebook, resumed shards) reuses them; one that moves on to other models (a benchmark's
generators, one after the other) drops the idle ones first, so only one set is held.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from synthface.generators.dataset.checks import (
    checkpoint_dir,
    checkpoint_sha256,
    encoder_path,
    qc_recognizer_path,
    uses_guidance,
)
from synthface.generators.dataset.config import GenerateConfig
from synthface.generators.dataset.placement import resolve_device
from synthface.generators.space import qc_scores_anchors


@dataclass
class Producer:
    """Models one worker keeps loaded across the shards it produces."""

    generator: object
    embedder: object
    anchors_comparable: bool  # QC embeddings live in the anchors' space
    device: str
    quality: object | None = None  # SDD-FIQA QualityScorer when qc.quality_model is set
    key: tuple = ()  # what it was loaded for (the idle pool's key)


# Idle producers by key. A shard borrows one for its duration, so two threads never
# sample with one model (UIFace swaps the attention processors of its UNet while
# sampling), and a model outlives the thread pool of a run. There are at most as many
# copies as shards ever ran at once in this process, all of one key (borrowing for a new
# key drops the others: GPU memory is not kept for models no shard will ask for again);
# one whose shard raised is dropped, not reused.
_IDLE: dict[tuple, list[Producer]] = {}
_LOCK = threading.Lock()


def _producer_key(cfg: GenerateConfig, device: str) -> tuple:
    from synthface.generators.checkpoint import read_generator_config

    ckpt = checkpoint_dir(cfg)
    ckpt_cfg = read_generator_config(ckpt)
    return (
        str(ckpt.resolve()),
        checkpoint_sha256(ckpt),
        encoder_path(cfg, ckpt_cfg),
        qc_recognizer_path(cfg, ckpt_cfg),
        cfg.qc.recognizer is None,
        cfg.identities.anchors,
        device,
        cfg.qc.quality_model,
        cfg.runner.torch_threads,
        cfg.generator.compile,
    )


def load_producer(cfg: GenerateConfig, device: str | None = None) -> Producer:
    """A newly loaded generator + QC embedder for ``cfg`` on ``device`` (default: resolved
    here); shards borrow pooled ones instead (``borrow_producer``)."""
    from synthface.generators.checkpoint import read_generator_config

    ckpt = checkpoint_dir(cfg)
    ckpt_cfg = read_generator_config(ckpt)
    if device is None:
        device = resolve_device(cfg.generator.device, cfg.generator.allow_cpu_fallback)
    enc_path = encoder_path(cfg, ckpt_cfg)
    qc_path = qc_recognizer_path(cfg, ckpt_cfg)
    import torch

    from synthface.generators.base import load_generator
    from synthface.generators.encoder import load_identity_encoder
    from synthface.recognition import load_embedder

    torch.set_num_threads(cfg.runner.torch_threads)
    # The encoder only matters for identity guidance (never for uiface, whose imported
    # checkpoints name none); QC has its own embedder.
    encoder = None
    if enc_path is not None and uses_guidance(cfg, ckpt_cfg, ckpt_cfg.generator):
        encoder = load_identity_encoder(enc_path, differentiable=True)
    generator = load_generator(ckpt, encoder=encoder, device=device)
    if cfg.generator.compile:
        # Compiled lazily on the first batch, once per loaded model (the pool keeps it).
        generator.denoiser = torch.compile(generator.denoiser)
    embedder = load_embedder(qc_path, device=device)
    same_space = qc_scores_anchors(cfg, ckpt_cfg, qc_path)
    quality = None
    if cfg.qc.quality_model is not None:
        from synthface.recognition.quality import QualityScorer

        quality = QualityScorer(cfg.qc.quality_model, device=device)
    key = _producer_key(cfg, device)
    return Producer(generator, embedder, same_space, device, quality, key)


def borrow_producer(cfg: GenerateConfig, device: str) -> Producer:
    """An idle producer for ``cfg`` on ``device``, or a newly loaded one; the caller has
    it to itself until ``return_producer``."""
    key = _producer_key(cfg, device)
    with _LOCK:
        for other in [k for k in _IDLE if k != key]:
            del _IDLE[other]
        idle = _IDLE.get(key)
        if idle:
            return idle.pop()
    return load_producer(cfg, device)


def return_producer(producer: Producer) -> None:
    with _LOCK:
        _IDLE.setdefault(producer.key, []).append(producer)


def clear_producer_cache() -> None:
    with _LOCK:
        _IDLE.clear()
