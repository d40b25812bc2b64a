"""Audit a generated dataset's QC sidecars and write its view: at the end of generation
and again, under other thresholds, without regenerating it."""

from __future__ import annotations

from pathlib import Path

from synthface.pipeline.qc.audit import audit, gather_identity_table, load_gallery
from synthface.pipeline.qc.config import QCConfig
from synthface.pipeline.qc.views import write_view

# QC settings that name models or tune memory, not thresholds: a view records what it kept
# and why, the same bytes wherever the models lie
_NOT_CRITERIA = ("recognizer", "gallery", "quality_model", "block", "view")


def audit_and_write_view(
    dataset_dir: str | Path,
    qc: QCConfig,
    *,
    split: str,
    ranges: list[tuple[int, int, int]],
    config_hash: str,
):
    """(audit result, view) of ``ranges`` (shard index, first and last
    identity) under ``qc``; writes ``views/<qc.view>.json``."""
    dataset_dir = Path(dataset_dir)
    table = gather_identity_table(dataset_dir, split, ranges)
    gallery = load_gallery(qc.gallery, table.centroids.shape[1]) if qc.gallery else None
    result = audit(table, qc, gallery=gallery)
    thresholds = {k: v for k, v in qc.model_dump(mode="json").items() if k not in _NOT_CRITERIA}
    view = write_view(
        dataset_dir,
        qc.view,
        split=split,
        config_hash=config_hash,
        num_identities=table.num_identities,
        identity_counts=table.num_samples.tolist(),
        excluded_identities=result.excluded_identities,
        excluded_samples=result.excluded_samples,
        criteria={
            "thresholds": thresholds,
            "drop_identities": sorted(qc.identity_drop_set()),
            "drop_samples": sorted(qc.drop_samples),
        },
    )
    return result, view


def write_filtered_view(dataset_dir: str | Path, qc: QCConfig, *, split: str = "train") -> dict:
    """Re-audit a finished dataset under other thresholds and write ``views/<qc.view>.json``.

    Reads only the manifest and the QC sidecars; shards and ``dataset.json`` are untouched,
    so a stricter or looser view costs seconds, not a regeneration.
    """
    from synthface.pipeline.shards import split_manifest

    dataset_dir = Path(dataset_dir)
    entry = split_manifest(dataset_dir, split)
    ranges = [(s["index"], s["first_identity"], s["last_identity"]) for s in entry["shards"]]
    result, view = audit_and_write_view(
        dataset_dir, qc, split=split, ranges=ranges, config_hash=entry["config_hash"]
    )
    return {
        "view": str(dataset_dir / "views" / f"{qc.view}.json"),
        **view,
        "summary": result.summary,
    }
