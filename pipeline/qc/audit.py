"""Dataset-level QC: per-shard score sidecars, separation between identities, leakage audit.

Each shard task leaves ``qc/{split}-{index:06d}.json`` (per-identity scores) and
``qc/{split}-{index:06d}.npy`` (those identities' centroids). At finalize the sidecars
are gathered into identity-level arrays — memory grows with the number of identities,
never with the number of samples — and compared blockwise: each identity against its
nearest other identity, and against an optional gallery of real identities (memory-mapped
and read in blocks, so a gallery of millions of rows never sits in memory at once).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.errors import InputError, ShardError
from synthface.pipeline.qc.config import QCConfig
from synthface.pipeline.qc.scores import DIGITS, IdentityScores, l2_normalize

QC_DIR = "qc"
FLAG_BITS = {"low_consistency": 1, "not_separated": 2, "leak": 4, "too_few_samples": 8}


def _sidecar(dataset_dir: str | Path, split: str, index: int, suffix: str) -> Path:
    return Path(dataset_dir) / QC_DIR / f"{split}-{index:06d}{suffix}"


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def write_shard_qc(
    dataset_dir: str | Path, split: str, index: int, scores: list[IdentityScores]
) -> None:
    """Write a shard's QC sidecars: centroids first, then the JSON that vouches for them."""
    if not scores:
        raise InputError(f"shard {index}: no identity scores to write")
    centroids = np.stack([s.centroid for s in scores]).astype(np.float32)
    data = _npy_bytes(centroids)
    npy = _sidecar(dataset_dir, split, index, ".npy")
    npy.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(npy, data)
    doc = {
        "shard": index,
        "split": split,
        "centroids_sha256": hashlib.sha256(data).hexdigest(),
        "identities": [s.to_dict() for s in scores],
    }
    text = json.dumps(doc, sort_keys=True, indent=1) + "\n"
    atomic_write_bytes(_sidecar(dataset_dir, split, index, ".json"), text.encode())


def read_shard_qc(dataset_dir: str | Path, split: str, index: int) -> list[IdentityScores] | None:
    """The shard's identity scores, or ``None`` when a sidecar is missing or inconsistent."""
    try:
        doc = json.loads(_sidecar(dataset_dir, split, index, ".json").read_text())
        data = _sidecar(dataset_dir, split, index, ".npy").read_bytes()
    except (OSError, ValueError):
        return None
    if hashlib.sha256(data).hexdigest() != doc.get("centroids_sha256"):
        return None
    centroids = np.load(io.BytesIO(data), allow_pickle=False)
    rows = doc.get("identities", [])
    if centroids.ndim != 2 or centroids.shape[0] != len(rows):
        return None
    return [IdentityScores.from_dict(d, centroids[i]) for i, d in enumerate(rows)]


@dataclass
class IdentityTable:
    """Every identity's QC summary as arrays (index = class label)."""

    num_samples: np.ndarray
    consistency: np.ndarray
    consistency_min: np.ndarray
    diversity: np.ndarray
    anchor_cos: np.ndarray  # NaN where not scored
    centroids: np.ndarray  # (C, D) unit rows
    low_consistency: dict[int, list[int]]  # identity -> sample indices
    duplicates: dict[int, list[int]]
    quality: np.ndarray | None = None  # mean sample quality per identity; NaN = not scored
    sample_quality: dict[int, list[list[float]]] = field(default_factory=dict)  # [index, q]

    def __post_init__(self) -> None:
        if self.quality is None:
            self.quality = np.full(len(self.num_samples), np.nan, dtype=np.float32)

    def low_quality(self, threshold: float | None) -> dict[int, list[int]]:
        """Samples whose quality is below ``threshold`` (none without a threshold)."""
        if threshold is None:
            return {}
        found = {
            i: [int(j) for j, q in pairs if q < threshold]
            for i, pairs in self.sample_quality.items()
        }
        return {i: v for i, v in found.items() if v}

    @property
    def num_identities(self) -> int:
        return int(self.centroids.shape[0])


def gather_identity_table(
    dataset_dir: str | Path, split: str, shard_ranges: list[tuple[int, int, int]]
) -> IdentityTable:
    """Read the sidecars of shards given as ``(index, first_identity, last_identity)``."""
    rows: list[IdentityScores] = []
    for index, first, last in shard_ranges:
        scores = read_shard_qc(dataset_dir, split, index)
        if scores is None:
            raise ShardError(
                f"{_sidecar(dataset_dir, split, index, '.json')}: QC sidecar missing or corrupt; "
                "re-run the shard"
            )
        got = [s.identity for s in scores]
        if got != list(range(first, last + 1)):
            raise ShardError(
                f"{_sidecar(dataset_dir, split, index, '.json')}: scores identities {got[:1]}..{got[-1:]} "
                f"do not match the shard's {first}..{last}"
            )
        rows.extend(scores)

    def col(name: str, dtype=np.float32) -> np.ndarray:
        return np.array(
            [np.nan if getattr(r, name) is None else getattr(r, name) for r in rows], dtype=dtype
        )

    return IdentityTable(
        num_samples=np.array([r.num_samples for r in rows], dtype=np.int64),
        consistency=col("consistency"),
        consistency_min=col("consistency_min"),
        diversity=col("diversity"),
        anchor_cos=col("anchor_cos"),
        centroids=np.stack([r.centroid for r in rows]).astype(np.float32),
        low_consistency={r.identity: r.low_consistency for r in rows if r.low_consistency},
        duplicates={r.identity: r.duplicates for r in rows if r.duplicates},
        quality=col("quality"),
        sample_quality={r.identity: r.sample_quality for r in rows if r.sample_quality},
    )


def nearest_other(centroids: np.ndarray, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Cosine to, and index of, each row's most similar *other* row (blockwise, exact)."""
    c = l2_normalize(centroids)
    n = c.shape[0]
    sim = np.full(n, -np.inf, dtype=np.float32)
    idx = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return np.full(n, np.nan, dtype=np.float32), idx
    for start in range(0, n, block):
        s = c[start : start + block] @ c.T
        rows = np.arange(s.shape[0])
        s[rows, start + rows] = -np.inf
        idx[start : start + block] = s.argmax(axis=1)
        sim[start : start + block] = s[rows, idx[start : start + block]]
    return sim, idx


def load_gallery(path: str | Path, dim: int) -> np.ndarray:
    """Memory-map a real-identity gallery ``(G, D)`` float .npy and check it fits ``dim``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: gallery embeddings file not found")
    try:
        gallery = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if gallery.ndim != 2 or not np.issubdtype(gallery.dtype, np.floating):
        raise InputError(
            f"{path}: gallery must be a 2-D float array (got {gallery.dtype} {gallery.shape})"
        )
    if gallery.shape[1] != dim:
        raise InputError(
            f"{path}: gallery embeddings have {gallery.shape[1]} dims but the QC recognizer gives {dim}; "
            "embed the gallery with the same recognizer"
        )
    if gallery.shape[0] == 0:
        raise InputError(f"{path}: gallery is empty")
    return gallery


def gallery_similarity(
    centroids: np.ndarray, gallery: np.ndarray, block: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Each centroid's highest cosine to any gallery row, and that row (gallery read blockwise)."""
    c = l2_normalize(centroids)
    best = np.full(c.shape[0], -np.inf, dtype=np.float32)
    arg = np.full(c.shape[0], -1, dtype=np.int64)
    for start in range(0, gallery.shape[0], block):
        g = l2_normalize(np.asarray(gallery[start : start + block], dtype=np.float32))
        if not np.all(np.isfinite(g)):
            raise InputError(f"gallery rows {start}..{start + len(g) - 1} contain NaN or inf")
        s = c @ g.T
        j = s.argmax(axis=1)
        v = s[np.arange(len(j)), j]
        better = v > best
        best[better] = v[better]
        arg[better] = start + j[better]
    return best, arg


@dataclass
class AuditResult:
    arrays: dict[str, np.ndarray]  # identity-level arrays for the manifest
    summary: dict  # JSON-able summary for the manifest's ``extra``
    identity_flags: dict[int, list[str]]  # identity -> flag names (only flagged ones)
    excluded_samples: dict[str, list[str]]  # sample key -> reasons (only excluded ones)
    excluded_identities: dict[int, list[str]]


def _stats(x: np.ndarray) -> dict:
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"mean": None, "min": None, "p05": None, "median": None, "max": None}
    return {
        "mean": round(float(x.mean()), DIGITS),
        "min": round(float(x.min()), DIGITS),
        "p05": round(float(np.percentile(x, 5)), DIGITS),
        "median": round(float(np.median(x)), DIGITS),
        "max": round(float(x.max()), DIGITS),
    }


def audit(table: IdentityTable, cfg: QCConfig, *, gallery: np.ndarray | None = None) -> AuditResult:
    """Flag identities and decide what the filtered view leaves out. Nothing is deleted."""
    c = table.num_identities
    sep, nearest = nearest_other(table.centroids, cfg.block)
    flags = np.zeros(c, dtype=np.uint8)
    flags[table.consistency < cfg.min_identity_consistency] |= FLAG_BITS["low_consistency"]
    flags[np.nan_to_num(sep, nan=-1.0) > cfg.max_neighbour_similarity] |= FLAG_BITS["not_separated"]
    arrays: dict[str, np.ndarray] = {
        "centroids": table.centroids,
        "qc_consistency": table.consistency,
        "qc_diversity": table.diversity,
        "qc_separation": sep.astype(np.float32),
        "qc_nearest_identity": nearest,
    }
    if np.isfinite(table.anchor_cos).any():
        arrays["qc_anchor_cos"] = table.anchor_cos
    if np.isfinite(table.quality).any():
        arrays["qc_quality"] = table.quality
    leak_sim = None
    if gallery is not None:
        leak_sim, leak_idx = gallery_similarity(table.centroids, gallery, cfg.block)
        flags[leak_sim > cfg.max_gallery_similarity] |= FLAG_BITS["leak"]
        arrays["qc_gallery_similarity"] = leak_sim.astype(np.float32)
        arrays["qc_gallery_index"] = leak_idx

    # Sample-level exclusions, then identities left with too few samples.
    excluded_samples: dict[str, list[str]] = {}
    kept = table.num_samples.copy()
    low_quality = table.low_quality(cfg.min_quality)
    for reason, table_map in (
        ("low_consistency", table.low_consistency),
        ("duplicate", table.duplicates),
        ("low_quality", low_quality),
    ):
        if reason not in cfg.drop_samples:
            continue
        for identity, indices in table_map.items():
            for i in indices:
                key = f"{identity:08d}/{i:04d}"
                if key not in excluded_samples:
                    kept[identity] -= 1
                excluded_samples.setdefault(key, []).append(reason)
    flags[kept < cfg.min_samples] |= FLAG_BITS["too_few_samples"]
    arrays["qc_flags"] = flags

    names = {bit: name for name, bit in FLAG_BITS.items()}
    identity_flags = {
        int(i): [names[b] for b in sorted(names) if flags[i] & b] for i in np.nonzero(flags)[0]
    }
    drop = cfg.identity_drop_set()
    excluded_identities = {
        i: [f for f in fl if f in drop] for i, fl in identity_flags.items() if set(fl) & drop
    }
    excluded_samples = {
        k: v for k, v in excluded_samples.items() if int(k[:8]) not in excluded_identities
    }
    counts = {name: int(((flags & bit) > 0).sum()) for name, bit in FLAG_BITS.items()}
    summary = {
        "thresholds": cfg.model_dump(mode="json"),
        "num_identities": c,
        "num_samples": int(table.num_samples.sum()),
        "flagged_identities": counts,
        "flagged_samples": {
            "low_consistency": sum(len(v) for v in table.low_consistency.values()),
            "duplicate": sum(len(v) for v in table.duplicates.values()),
            "low_quality": sum(len(v) for v in low_quality.values()),
        },
        "identity_consistency": _stats(table.consistency),
        "identity_diversity": _stats(table.diversity),
        "nearest_identity_similarity": _stats(sep),
        "anchor_cos": _stats(table.anchor_cos),
        "identity_quality": _stats(table.quality),
        "gallery_similarity": None if leak_sim is None else _stats(leak_sim),
        "view": {
            "name": cfg.view,
            "excluded_identities": len(excluded_identities),
            "excluded_samples": len(excluded_samples),
        },
    }
    return AuditResult(arrays, summary, identity_flags, excluded_samples, excluded_identities)
