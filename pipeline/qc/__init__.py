"""Quality and privacy control of identity sets: pure numpy on embeddings.

``score_identity`` runs per identity inside the shard producer (per-sample scores go
into each sample's ``.json``); ``audit`` runs once at finalize on identity-level
arrays (separation, leakage); ``write_view`` records what filtering leaves out.
"""

from synthface.pipeline.qc.audit import (
    FLAG_BITS,
    AuditResult,
    IdentityTable,
    audit,
    gallery_similarity,
    gather_identity_table,
    load_gallery,
    nearest_other,
    read_shard_qc,
    write_shard_qc,
)
from synthface.pipeline.qc.config import QCConfig
from synthface.pipeline.qc.scores import IdentityScores, l2_normalize, score_identity
from synthface.pipeline.qc.views import View, load_view, open_view, view_path, write_view

__all__ = [
    "FLAG_BITS",
    "AuditResult",
    "IdentityScores",
    "IdentityTable",
    "QCConfig",
    "View",
    "audit",
    "gallery_similarity",
    "gather_identity_table",
    "l2_normalize",
    "load_gallery",
    "load_view",
    "nearest_other",
    "open_view",
    "read_shard_qc",
    "score_identity",
    "view_path",
    "write_shard_qc",
    "write_view",
]
