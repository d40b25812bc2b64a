"""Finish a generation run: QC audit, manifest, filtered view, dataset card, report.

Runs after every planned shard exists. It reads only the per-shard QC sidecars
(identity-level), so its memory grows with the number of identities, not samples.
Re-running it on a finished dataset rewrites the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from synthface.pipeline.dataset_card import write_dataset_card
from synthface.pipeline.embedding_space import read_space_record
from synthface.pipeline.errors import ShardError
from synthface.pipeline.generate_plan import GenerateConfig, ShardWork, anchors_path, novelty_path
from synthface.pipeline.qc import QCConfig, audit, gather_identity_table, load_gallery, write_view
from synthface.pipeline.shards import completed_shards, finalize_dataset
from synthface.pipeline.shards.manifest import config_hash


def missing_shards(cfg: GenerateConfig, work: list[ShardWork]) -> list[int]:
    done = completed_shards(cfg.output.dir, split=cfg.output.split, check_sha=False)
    return [w.index for w in work if w.index not in done]


def read_novelty(dataset_dir: Path) -> dict | None:
    """The anchors' distance to the generator's training identities (``plan/novelty.json``)."""
    try:
        return json.loads(novelty_path(dataset_dir).read_text())
    except (OSError, ValueError):
        return None


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
    table = gather_identity_table(
        dataset_dir, split, [(w.index, w.first_identity, w.last_identity) for w in work]
    )
    gallery = None
    if cfg.qc.gallery is not None:
        gallery = load_gallery(cfg.qc.gallery, table.centroids.shape[1])
    result = audit(table, cfg.qc, gallery=gallery)
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
    view = write_view(
        dataset_dir,
        cfg.qc.view,
        split=split,
        config_hash=config_hash(dataset_cfg),
        num_identities=table.num_identities,
        identity_counts=table.num_samples.tolist(),
        excluded_identities=result.excluded_identities,
        excluded_samples=result.excluded_samples,
        criteria={
            "drop_identities": sorted(cfg.qc.identity_drop_set()),
            "drop_samples": sorted(cfg.qc.drop_samples),
        },
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
        )
        out["report"] = {k: str(v) for k, v in paths.items()}
    return out


def write_filtered_view(dataset_dir: str | Path, qc: QCConfig, *, split: str = "train") -> dict:
    """Re-audit a finished dataset under other thresholds and write ``views/<qc.view>.json``.

    Reads only the manifest and the QC sidecars; shards and ``dataset.json`` are untouched,
    so a stricter or looser view costs seconds, not a regeneration.
    """
    from synthface.pipeline.shards import split_manifest

    dataset_dir = Path(dataset_dir)
    entry = split_manifest(dataset_dir, split)
    ranges = [(s["index"], s["first_identity"], s["last_identity"]) for s in entry["shards"]]
    table = gather_identity_table(dataset_dir, split, ranges)
    gallery = load_gallery(qc.gallery, table.centroids.shape[1]) if qc.gallery else None
    result = audit(table, qc, gallery=gallery)
    view = write_view(
        dataset_dir,
        qc.view,
        split=split,
        config_hash=entry["config_hash"],
        num_identities=table.num_identities,
        identity_counts=table.num_samples.tolist(),
        excluded_identities=result.excluded_identities,
        excluded_samples=result.excluded_samples,
        criteria={
            "thresholds": qc.model_dump(mode="json"),
            "drop_identities": sorted(qc.identity_drop_set()),
            "drop_samples": sorted(qc.drop_samples),
        },
    )
    return {
        "view": str(dataset_dir / "views" / f"{qc.view}.json"),
        **view,
        "summary": result.summary,
    }
