"""Finish a generation run: QC audit, manifest, filtered view, dataset card, report.

Runs after every planned shard exists. It reads only the per-shard QC sidecars
(identity-level), so its memory grows with the number of identities, not samples.
Re-running it on a finished dataset rewrites the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthface.generators.dataset.config import GenerateConfig
from synthface.generators.dataset.plan import ShardWork, anchors_path, read_novelty
from synthface.pipeline.dataset_card import write_dataset_card
from synthface.pipeline.embedding_space import read_space_record
from synthface.pipeline.errors import ShardError
from synthface.pipeline.qc.refilter import audit_and_write_view
from synthface.pipeline.shards import completed_shards, finalize_dataset
from synthface.pipeline.shards.manifest import config_hash


def missing_shards(cfg: GenerateConfig, work: list[ShardWork]) -> list[int]:
    done = completed_shards(cfg.output.dir, split=cfg.output.split, check_sha=False)
    return [w.index for w in work if w.index not in done]


def finalize_generation(cfg: GenerateConfig, dataset_cfg: dict, work: list[ShardWork]) -> dict:
    """Audit, publish ``dataset.json``, write ``views/<qc.view>.json``, ``README.md`` (the
    dataset card) and the report.

    Returns a small summary: paths, totals and the QC summary.
    """
    dataset_dir = Path(cfg.output.dir)
    split = cfg.output.split
    missing = missing_shards(cfg, work)
    if missing:
        listed = ", ".join(str(i) for i in missing[:10])
        raise ShardError(
            f"{dataset_dir}: shards not complete yet ({listed}); re-run to produce them"
        )
    # the view first: the manifest below is published last, so a dataset with a manifest
    # always has its view
    result, view = audit_and_write_view(
        dataset_dir,
        cfg.qc,
        split=split,
        ranges=[(w.index, w.first_identity, w.last_identity) for w in work],
        config_hash=config_hash(dataset_cfg),
    )
    anchors = np.load(anchors_path(dataset_dir), allow_pickle=False)
    extra = {"qc": result.summary}
    novelty = read_novelty(dataset_dir)
    if novelty is not None:
        extra["anchors"] = novelty
    spaces = read_space_record(dataset_dir)
    if spaces is not None:
        extra["embedding_space"] = spaces
    manifest = finalize_dataset(
        dataset_dir,
        config=dataset_cfg,
        num_classes=cfg.identities.count,
        identity_arrays={"anchors": anchors, **result.arrays},
        split=split,
        extra=extra,
    )
    card = write_dataset_card(dataset_dir, split=split, checkpoint=str(cfg.generator.checkpoint))
    out = {
        "dataset_dir": str(dataset_dir),
        "manifest": str(dataset_dir / "dataset.json"),
        "card": str(card),
        "shards_dir": str(dataset_dir / "shards"),
        "num_identities": manifest["splits"][split]["num_identities"],
        "num_samples": manifest["splits"][split]["num_samples"],
        "num_shards": manifest["splits"][split]["num_shards"],
        "view": str(dataset_dir / "views" / f"{cfg.qc.view}.json"),
        "view_identities": view["num_identities"],
        "view_samples": view["num_samples"],
        "qc": result.summary,
    }
    if novelty is not None:
        out["anchors"] = novelty
    if spaces is not None:
        out["embedding_space"] = spaces
    if cfg.report.enabled:
        from synthface.pipeline.report import write_report

        paths = write_report(
            dataset_dir,
            split=split,
            contact_identities=cfg.report.contact_identities,
            contact_samples=cfg.report.contact_samples,
            seed=cfg.report.seed,
            reference=cfg.report.reference,
            reference_split=cfg.report.reference_split,
        )
        out["report"] = {k: str(v) for k, v in paths.items()}
    return out
