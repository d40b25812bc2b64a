"""Plan-time agreement of embedding spaces: generator conditioning, anchors, QC recognizer.

A generation run touches up to three sets of identity vectors: the space the generator
is conditioned in (its checkpoint's ``encoder.space``, else the fingerprint of its
encoder), the anchors or contexts it is given (their sidecar may declare a space), and
the QC recognizer's embeddings, which are compared with the anchors (``anchor_cos``)
only when they live in the anchors' space. A mismatch found after sampling wastes the
whole run, and a mismatch of two 512-d spaces is not found at all, so everything is
decided here, before anything is written, from files only (fingerprints, sidecars and
the recognizer's output size).

When ``qc.recognizer`` is unset the conditioning encoder doubles as the QC recognizer
and is *meant* to score the anchors: a recognizer of another dimension or space is then
refused. An explicitly given ``qc.recognizer`` is an independent judge: it scores
consistency and separation in its own space and ``anchor_cos`` only if its fingerprint
is the anchors' space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from synthface.pipeline.embedding_space import (
    describe,
    is_fingerprint,
    read_anchor_space,
    recognizer_fingerprint,
    sidecar_path,
)
from synthface.pipeline.errors import ConfigError, InputError


@dataclass(frozen=True)
class SpacePlan:
    """What each set of vectors of a run is taken to be (``plan/embedding_space.json``)."""

    conditioning: str | None
    conditioning_from: str
    anchors: str | None
    anchors_from: str
    qc_recognizer: str
    anchor_cos: bool  # QC embeddings are compared with the anchors

    def to_dict(self) -> dict:
        return asdict(self)


def conditioning_space(cfg, ckpt_cfg) -> tuple[str | None, str]:
    """(the generator's conditioning space, where that was read); ``None``: not recorded."""
    if ckpt_cfg.encoder.space is not None:
        return ckpt_cfg.encoder.space, "checkpoint encoder.space"
    if cfg.generator.encoder is not None and Path(cfg.generator.encoder).exists():
        return recognizer_fingerprint(cfg.generator.encoder), "generator.encoder"
    if ckpt_cfg.encoder.path is not None and Path(ckpt_cfg.encoder.path).exists():
        return recognizer_fingerprint(ckpt_cfg.encoder.path), "checkpoint encoder.path"
    return None, "unknown"


def anchors_space(cfg, conditioning: str | None, source: str) -> tuple[str | None, str]:
    """The anchors' space: a given file's sidecar (which must agree), else the generator's."""
    path = cfg.identities.anchors
    if path is None:
        return conditioning, "packed in the generator's space"
    declared = read_anchor_space(path)
    if declared is None:
        return conditioning, "undeclared (no sidecar): taken to be the generator's"
    if conditioning is not None and declared != conditioning:
        raise InputError(
            f"identities.anchors: {path}: {sidecar_path(path).name} declares embedding space "
            f"{describe(declared)}, the generator is conditioned in {describe(conditioning)} "
            f"({source}); give contexts from the generator's space"
        )
    return declared, f"sidecar {sidecar_path(path).name}"


def recognizer_dim(path: str | Path) -> int:
    """Embedding size of a recognizer (a checkpoint directory or ``.onnx``), loaded on CPU."""
    from synthface.recognition import load_embedder

    return int(load_embedder(str(path), device="cpu").dim)


def plan_spaces(cfg, ckpt_cfg, qc_path: str, *, guidance_encoder: str | None = None) -> SpacePlan:
    """Check that conditioning, anchors and QC agree; one line naming the field if not.

    ``guidance_encoder``: the encoder identity guidance will run (must be the conditioning
    space when that is recorded).
    """
    dim = ckpt_cfg.conditioning.identity_dim
    cond, cond_from = conditioning_space(cfg, ckpt_cfg)
    if guidance_encoder is not None and ckpt_cfg.encoder.space is not None:
        got = recognizer_fingerprint(guidance_encoder)
        if got != cond:
            raise ConfigError(
                f"generator.encoder: {guidance_encoder} ({describe(got)}) is not the space the "
                f"generator is conditioned in ({describe(cond)}, {cond_from}): identity "
                "guidance would pull images toward another recognizer's notion of identity"
            )
    space, space_from = anchors_space(cfg, cond, cond_from)
    qc_fp = recognizer_fingerprint(qc_path)
    if cfg.qc.recognizer is None:
        field = "generator.encoder" if cfg.generator.encoder else "checkpoint encoder.path"
        got = recognizer_dim(qc_path)
        if got != dim:
            raise ConfigError(
                f"{field}: {qc_path} gives {got}-d embeddings, the generator's contexts and "
                f"anchors are {dim}-d: it cannot be the QC recognizer that scores images "
                "against their anchors; give qc.recognizer (--qc-recognizer) an independent "
                "recognizer"
            )
        if space is not None and qc_fp != space:
            named = ckpt_cfg.encoder.space == space and not is_fingerprint(space)
            hint = (
                "re-import with --encoder PATH to record this recognizer's fingerprint, or "
                if named
                else ""
            )
            raise ConfigError(
                f"{field}: {qc_path} ({describe(qc_fp)}) is not in the anchors' embedding "
                f"space {describe(space)} ({space_from}); as the default QC recognizer it "
                f"would score images against anchors of another recognizer: {hint}give "
                "qc.recognizer (--qc-recognizer) an independent recognizer"
            )
    anchor_cos = space is not None and qc_fp == space
    if anchor_cos and cfg.qc.recognizer is not None and recognizer_dim(qc_path) != dim:
        raise ConfigError(
            f"qc.recognizer: {qc_path}: has the anchors' fingerprint but not their dimension {dim}"
        )
    return SpacePlan(cond, cond_from, space, space_from, qc_fp, anchor_cos)


def qc_scores_anchors(cfg, ckpt_cfg, qc_path: str) -> bool:
    """Whether QC embeddings are compared with the anchors (what :func:`plan_spaces` decided)."""
    cond, _ = conditioning_space(cfg, ckpt_cfg)
    declared = read_anchor_space(cfg.identities.anchors) if cfg.identities.anchors else None
    space = declared or cond
    return space is not None and recognizer_fingerprint(qc_path) == space


def check_gallery(gallery: str | Path, qc_path: str) -> None:
    """The leakage gallery must be embedded by the QC recognizer: checked before sampling.

    Leakage compares the QC recognizer's centroids with the gallery rows, so a gallery of
    another dimension would only fail at finalize, after every image was drawn, and one
    of another space (declared in its ``.npy.json`` sidecar) would give cosines that mean
    nothing. A gallery without a sidecar is taken to be in the QC recognizer's space.
    """
    from synthface.pipeline.qc import load_gallery

    load_gallery(gallery, recognizer_dim(qc_path))
    declared = read_anchor_space(gallery)
    if declared is not None and declared != recognizer_fingerprint(qc_path):
        raise InputError(
            f"qc.gallery: {gallery}: {sidecar_path(gallery).name} declares embedding space "
            f"{describe(declared)}, the QC recognizer {qc_path} is "
            f"{describe(recognizer_fingerprint(qc_path))}: embed the gallery with the QC "
            "recognizer"
        )
