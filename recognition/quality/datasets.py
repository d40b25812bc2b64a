"""Per-sample quality of a whole shard dataset, written as a keyed array.

Both outputs use the layout ``synthface recognition embed`` writes and
:class:`synthface.recognition.training.fields.KeyedArray` reads: ``Q.npy`` (N float32,
manifest order), ``Q.keys.txt`` (one sample key per row) and ``Q.source.json`` (what
made it). The quality trainer, DDL's ``quality`` hard rule and the benchmarks read them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from synthface.pipeline.atomic import atomic_path, atomic_write_json, atomic_write_text
from synthface.pipeline.errors import InputError


def _write(out: Path, values: np.ndarray, keys: list[str], source: dict[str, Any]) -> dict:
    if out.suffix != ".npy":
        raise InputError(f"{out}: output must end in .npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".keys.txt"), "".join(f"{k}\n" for k in keys))
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(values, dtype=np.float32), allow_pickle=False)
    summary = {**source, "out": str(out), "count": len(keys)}
    atomic_write_json(out.with_suffix(".source.json"), summary)
    return summary


def label_dataset(
    dataset: str | os.PathLike,
    recognizer: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "train",
    embeddings: str | os.PathLike | None = None,
    samples: int = 24,
    repeats: int = 12,
    seed: int = 0,
    flip: bool = False,
    device: str = "cpu",
    batch_size: int = 64,
) -> dict:
    """SDD-FIQA pseudo-labels of every sample of ``dataset`` under ``recognizer``.

    The embeddings go to ``embeddings`` (default ``OUT.embeddings.npy``) and are reused
    when that file already exists, so several label settings cost one embedding pass.
    """
    from synthface.recognition.embed_files import embed_to_npy
    from synthface.recognition.quality.pseudo_labels import pseudo_labels

    out = Path(out)
    emb_path = Path(embeddings) if embeddings else out.with_suffix(".embeddings.npy")
    if not emb_path.is_file():
        embed_to_npy(recognizer, emb_path, shards=dataset, split=split, flip=flip,
                     device=device, batch_size=batch_size, resize=True)  # fmt: skip
    keys = emb_path.with_suffix(".keys.txt").read_text().split()
    labels = np.load(emb_path.with_suffix(".labels.npy"), allow_pickle=False)
    emb = np.load(emb_path, mmap_mode="r", allow_pickle=False)
    if not (len(keys) == len(labels) == emb.shape[0]):
        raise InputError(f"{emb_path}: rows, keys and labels disagree; delete it and rerun")
    quality = pseudo_labels(emb, labels, samples=samples, repeats=repeats, seed=seed)
    source = {
        "kind": "sdd-fiqa pseudo-labels",
        "dataset": str(dataset),
        "split": split,
        "recognizer": str(recognizer),
        "embeddings": str(emb_path),
        "samples": samples,
        "repeats": repeats,
        "seed": seed,
        "flip": flip,
    }
    return _write(out, quality, keys, source)


def score_dataset(
    dataset: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "train",
    device: str = "cpu",
    batch_size: int = 64,
) -> dict:
    """Quality-model scores of every sample of ``dataset`` (streamed, one batch in memory)."""
    from synthface.pipeline.shards import iter_samples
    from synthface.recognition.quality.model import QualityScorer

    scorer = QualityScorer(model, device=device)
    keys: list[str] = []
    scores: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    for sample in iter_samples(dataset, split=split):
        keys.append(sample["__key__"])
        batch.append(sample["image"])
        if len(batch) == batch_size:
            scores.append(scorer.score(np.stack(batch), batch_size))
            batch = []
    if batch:
        scores.append(scorer.score(np.stack(batch), batch_size))
    if not keys:
        raise InputError(f"{dataset}: split {split!r} has no samples")
    source = {
        "kind": "quality scores",
        "dataset": str(dataset),
        "split": split,
        "model": str(model),
    }
    return _write(Path(out), np.concatenate(scores), keys, source)
