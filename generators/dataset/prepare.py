"""Prepare a generation run: check every input, claim the output, fix anchors and plan.

Runs once per run, in the flow process (which may be a head node without GPUs) or in
a plain Python call, before any shard task; everything it decides is written under
``plan/`` so that shard tasks on other hosts and resumed runs read it back unchanged.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthface.generators.dataset.anchors import (
    anchors_sha256,
    load_anchors,
    resolve_anchor_region,
    store_anchors,
)
from synthface.generators.dataset.checks import (
    QC_INFLATED,
    check_identity_guidance,
    check_sampler_options,
    checkpoint_dir,
    checkpoint_sha256,
    encoder_path,
    generator_name,
    model_digests,
    qc_recognizer_path,
    qc_uses_conditioning_encoder,
    uses_guidance,
)
from synthface.generators.dataset.config import GenerateConfig
from synthface.generators.dataset.placement import resolve_device
from synthface.generators.dataset.plan import (
    ShardWork,
    anchors_path,
    dataset_config,
    novelty_path,
    plan_generation,
    read_novelty,
    read_plan,
    write_plan,
)
from synthface.generators.region import REGION_FILE
from synthface.generators.space import check_gallery, plan_spaces
from synthface.pipeline.atomic import atomic_write_json
from synthface.pipeline.embedding_space import space_record_path, write_anchor_space
from synthface.pipeline.errors import InputError
from synthface.pipeline.output_paths import check_output_outside
from synthface.pipeline.report import check_reference
from synthface.pipeline.shards import begin_dataset
from synthface.pipeline.shards.manifest import config_hash

log = logging.getLogger(__name__)

_TMP_RE = re.compile(r"^\..+\.tmp-(\d+)$")


def remove_stale_temporaries(dataset_dir: Path) -> list[Path]:
    """Delete half-written files (``.NAME.tmp-PID``) left by processes that were killed.

    Only files whose writer process no longer exists are removed, so a concurrent
    writer's temporary file is never touched.
    """
    removed = []
    for sub in ("shards", "records", "qc", "plan", "views", "report", "provenance", "."):
        folder = dataset_dir / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            m = _TMP_RE.match(path.name)
            if m is None or not path.is_file():
                continue
            try:
                os.kill(int(m.group(1)), 0)
                continue  # writer still alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@dataclass(frozen=True)
class Prepared:
    dataset_dir: Path
    dataset_config: dict
    work: list[ShardWork]
    generator_name: str
    warnings: tuple[str, ...] = ()
    novelty: dict | None = None

    @property
    def num_samples(self) -> int:
        return sum(w.num_samples for w in self.work)


def prepare_generation(cfg: GenerateConfig, *, progress=None) -> Prepared:
    """Check every input, claim the output directory, fix the anchors and the shard plan.

    Fails before any generation on: missing checkpoint, unknown generator, missing
    recognizer, gallery or report reference, GPU requested but absent (thread runner only:
    Dask shards run elsewhere, so a head node without GPUs plans and each worker resolves
    its own device), output holding another dataset.
    Anchors are computed once and stored (``plan/anchors.npy``); a resumed run reuses
    them rather than recomputing, so they cannot drift with thread counts. With
    ``identities.anchors`` the given file is validated and its first ``count`` rows are
    stored instead (the dataset's identity then includes their hash, not the path).
    """
    from synthface.generators.checkpoint import read_generator_config

    ckpt = checkpoint_dir(cfg)
    ckpt_cfg = read_generator_config(ckpt)
    name = generator_name(cfg, ckpt_cfg)
    check_identity_guidance(cfg, ckpt_cfg, name)
    check_sampler_options(cfg, ckpt_cfg, name)
    if cfg.runner.kind == "thread":
        resolve_device(cfg.generator.device, cfg.generator.allow_cpu_fallback)
    qc_recognizer_path(cfg, ckpt_cfg)
    if cfg.qc.gallery is not None and not Path(cfg.qc.gallery).is_file():
        raise InputError(f"qc.gallery: {cfg.qc.gallery}: no such embeddings file")
    if (
        cfg.qc.quality_model is not None
        and not (Path(cfg.qc.quality_model) / "config.json").is_file()
    ):
        raise InputError(
            f"qc.quality_model: {cfg.qc.quality_model}: not a quality model directory "
            "(synthface quality train writes one)"
        )
    if cfg.report.enabled and cfg.report.reference is not None:
        check_reference(cfg.report.reference, cfg.report.reference_split)
    enc = encoder_path(cfg, ckpt_cfg)
    if enc is not None and not Path(enc).exists():
        raise InputError(f"generator.encoder: {enc}: no such identity encoder")
    dim = ckpt_cfg.conditioning.identity_dim
    given = None
    if cfg.identities.anchors is not None:
        given = load_anchors(cfg.identities.anchors, dim, cfg.identities.count)
    else:
        from synthface.generators.id3.anchors import check_tammes_memory

        check_tammes_memory(cfg.identities.count, dim, ckpt_cfg.id3.anchor_block)
    spaces = plan_spaces(
        cfg,
        ckpt_cfg,
        qc_recognizer_path(cfg, ckpt_cfg),
        guidance_encoder=cfg.generator.encoder if uses_guidance(cfg, ckpt_cfg, name) else None,
    )
    if cfg.qc.gallery is not None:
        check_gallery(cfg.qc.gallery, qc_recognizer_path(cfg, ckpt_cfg))
    warnings: list[str] = []
    if qc_uses_conditioning_encoder(cfg, ckpt_cfg):
        warnings.append(QC_INFLATED)
    mode, region, notes = resolve_anchor_region(cfg, ckpt)
    warnings += notes
    if region is not None and region.dim != dim:
        raise InputError(
            f"{ckpt}/{REGION_FILE}: embeddings of dimension {region.dim}, the generator's "
            f"identity_dim is {dim}"
        )
    max_cos = cfg.identities.novelty_max_cos
    guard = mode in ("data", "sphere") and region is not None and max_cos is not None
    for text in warnings:
        log.warning(text)

    dataset_dir = Path(cfg.output.dir)
    check_output_outside(
        dataset_dir,
        "output.dir",
        **{"generator.checkpoint": ckpt, "report.reference": cfg.report.reference},
    )
    remove_stale_temporaries(dataset_dir)
    dcfg = dataset_config(
        cfg,
        checkpoint_sha256=checkpoint_sha256(ckpt),
        generator_name=name,
        anchors_sha256=None if given is None else anchors_sha256(given),
        anchor_region=mode,
        novelty_guard=guard,
        model_digests=model_digests(cfg, ckpt_cfg, name),
    )
    begin_dataset(dataset_dir, config=dcfg, split=cfg.output.split)
    work = plan_generation(cfg)
    digest = config_hash(dcfg)
    stored = read_plan(dataset_dir)
    apath = anchors_path(dataset_dir)
    anchors = None
    moved = None  # anchors the novelty guard had to move (known when computed here)
    if given is not None:
        store_anchors(apath, given)
        anchors = given
    elif stored is not None and stored[0] == digest and apath.is_file():
        try:
            anchors = np.load(apath, allow_pickle=False)
        except (OSError, ValueError):
            anchors = None
        if anchors is not None and anchors.shape != (cfg.identities.count, dim):
            anchors = None
    if anchors is None:
        import torch

        from synthface.generators.id3.anchors import tammes_anchors

        iters = cfg.identities.anchor_iterations
        if iters is None:
            iters = ckpt_cfg.id3.anchor_iterations
        # Reduction order follows the intra-op thread count, and the optimisation amplifies
        # last-bit differences: pin the count so a plan made in a Dask worker (which runs
        # single-threaded) equals one made in the flow process.
        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.runner.torch_threads)
        packing = {
            "iterations": iters,
            "block": ckpt_cfg.id3.anchor_block,
            "seed": cfg.identities.seed,
            "progress": progress,
        }
        try:
            if mode == "data":
                from synthface.generators.id3.anchors import anchors_in_region

                anchors = anchors_in_region(
                    region.stats(),
                    cfg.identities.count,
                    variance=cfg.identities.region_variance,
                    **packing,
                )
            else:
                anchors = tammes_anchors(cfg.identities.count, dim, **packing)
        finally:
            torch.set_num_threads(threads)
        anchors = np.ascontiguousarray(anchors.cpu().numpy(), dtype=np.float32)
        if guard:
            from synthface.generators.region import novelty_guard

            anchors, moved = novelty_guard(anchors, region.centroids, max_cos)
        store_anchors(apath, anchors)
    novelty = None
    if region is not None:
        from synthface.generators.region import novelty_report

        if moved is None and guard:  # anchors reused from the plan: keep the count made then
            moved = (read_novelty(dataset_dir) or {}).get("anchors_moved")
        novelty = {
            "anchor_region": mode,
            "guard": guard,
            "anchors_moved": moved,
            **novelty_report(anchors, region, max_cos if guard else None),
        }
        atomic_write_json(novelty_path(dataset_dir), novelty)
    atomic_write_json(space_record_path(dataset_dir), spaces.to_dict())
    if spaces.anchors is not None:
        write_anchor_space(apath, spaces.anchors)
    write_plan(dataset_dir, dcfg, work)
    return Prepared(dataset_dir, dcfg, work, name, tuple(warnings), novelty)
