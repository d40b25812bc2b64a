"""Benchmark generation stage: the same identity budget, seed and judge for every generator.

The ``generate`` config built here is the one ``generate-synthetic`` runs: the benchmark
flow hands it to that flow (as a subflow), the plain-function path to
:func:`synthface.generators.dataset.generate_dataset`, which write the same bytes.
QC always uses the benchmark's independent judge, and its gallery is the judge's view
of the real training identities, so "leak" flags mean "a synthetic identity the judge
finds too close to a real training identity".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from synthface.generators.dataset.config import GenerateConfig
from synthface.pipeline.atomic import atomic_path


def judge_gallery(stage_dir: Path, judge: str, real: str, *, device: str, batch: int = 256):
    """The judge's unit mean embedding of every real training identity (``gallery.npy``)."""
    from synthface.generators.dataset.stages import resize
    from synthface.pipeline.shards import iter_samples
    from synthface.recognition import load_embedder

    emb = load_embedder(judge, device=device)
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    images, labels = [], []

    def flush():
        if images:
            v = emb.embed(resize(np.stack(images), emb.input_size), batch_size=batch)
            for row, lab in zip(v, labels):
                sums[lab] = sums.get(lab, 0) + row.astype(np.float64)
                counts[lab] = counts.get(lab, 0) + 1
            images.clear()
            labels.clear()

    for s in iter_samples(real):
        images.append(s["image"])
        labels.append(int(s["label"]))
        if len(images) == batch:
            flush()
    flush()
    cent = np.stack([sums[k] / counts[k] for k in sorted(sums)])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    path = stage_dir / "gallery.npy"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, cent.astype(np.float32), allow_pickle=False)
    own = cent @ cent.T
    np.fill_diagonal(own, -1.0)
    nn = own.max(1)
    return {
        "gallery": str(path),
        "identities": len(cent),
        # Real identities' nearest other real identity by the judge: the scale against
        # which synthetic-to-real similarities (QC "leak") should be read.
        "real_nearest_neighbour_cos": {
            "mean": round(float(nn.mean()), 4),
            "p95": round(float(np.percentile(nn, 95)), 4),
        },
    }


def generation_config(
    out: Path,
    *,
    name: str,
    checkpoint: str,
    judge: str,
    gallery: str | None,
    cfg,
    sampler_options: dict | None = None,
    real_nearest_cos: float | None = None,
) -> GenerateConfig:
    """The ``generate`` config for one generator's synthetic set under the benchmark.

    ``real_nearest_cos``: the judge's real-identity nearest-neighbour cosine (p95) that
    becomes the leak threshold under ``generation.leak_threshold: real``.
    """
    gen = cfg.generation
    qc = gen.qc.model_dump(mode="json")
    qc["recognizer"] = judge
    qc["gallery"] = gallery
    if gen.leak_threshold == "real" and gallery is not None:
        if real_nearest_cos is None:
            raise ValueError("generation.leak_threshold 'real' needs the gallery's real scale")
        qc["max_gallery_similarity"] = float(real_nearest_cos)
    generator = {
        "name": name,
        "checkpoint": checkpoint,
        "device": cfg.device,
        "batch_size": gen.batch_size,
    }
    for key in ("sampler", "steps", "guidance_scale", "id_guidance_scale"):
        if getattr(gen, key) is not None:
            generator[key] = getattr(gen, key)
    if sampler_options:
        generator["sampler_options"] = dict(sampler_options)
    return GenerateConfig.model_validate(
        {
            "name": f"{cfg.name}-{name}",
            "generator": generator,
            "identities": {
                "count": cfg.budget.identities,
                "samples_per_identity": cfg.budget.per_identity,
                "seed": cfg.budget.seed,
                "anchor_region": gen.anchor_region,
                "region_variance": gen.region_variance,
                "novelty_max_cos": gen.novelty_max_cos,
            },
            "output": {
                "dir": str(out),
                "image_format": gen.image_format,
                "max_samples_per_shard": gen.max_samples_per_shard,
            },
            "qc": qc,
            "report": {"enabled": True},
            "runner": {"torch_threads": cfg.threads},
        }
    )


def synthesize(stage_dir: Path, gcfg: GenerateConfig, generate: Callable[[GenerateConfig], dict]):
    """Generate the set (resuming completed shards) and summarise its QC and anchors."""
    from synthface.generators.benchmark.data import dataset_identity
    from synthface.pipeline.shards import split_manifest

    summary = generate(gcfg)
    ds = Path(gcfg.output.dir)
    extra = split_manifest(ds).get("extra", {})
    qc = extra.get("qc", {})
    flagged = qc.get("flagged_identities", {})
    return {
        "path": str(ds),
        **dataset_identity(ds),
        "qc": {
            "identity_consistency": (qc.get("identity_consistency") or {}).get("mean"),
            "nearest_identity_similarity": (qc.get("nearest_identity_similarity") or {}).get(
                "mean"
            ),
            "gallery_similarity": (qc.get("gallery_similarity") or {}).get("mean"),
            "not_separated": flagged.get("not_separated"),
            "low_consistency": flagged.get("low_consistency"),
            "leak": flagged.get("leak"),
            "thresholds": {
                k: (qc.get("thresholds") or {}).get(k)
                for k in ("max_neighbour_similarity", "min_identity_consistency")
            }
            | {
                "max_gallery_similarity": (qc.get("thresholds") or {}).get("max_gallery_similarity")
            },
        },
        "anchors": extra.get("anchors"),
        "warnings": list(summary.get("warnings") or []),
        "report": str(ds / "report" / "report.md"),
    }
