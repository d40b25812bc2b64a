"""Benchmark evaluation: every protocol with the ``synthface eval`` code, FRCSyn, the gap to real.

Verification uses :func:`synthface.recognition.evaluation.embed.evaluate_bin`, the
insightface "Accuracy-Flip" protocol that ``synthface eval verify --bin`` runs (the tests
check the two agree to the last digit). FRCSyn rows use
:func:`synthface.recognition.frcsyn.scoring.score_run` with thresholds from the
calibration tree of held-out training-side images, never from evaluation data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_write_json

# Embeddings of (model, tree, image list): Task 1 and Task 2 share the calibration tree
# and bupt, so each is embedded once per stage rather than once per sub-task, and a
# reference row's recognizer (FRCSyn's baseline system of every set of its seed) once
# per run rather than once per set. An entry is a few thousand 128-d vectors (~1-3 MB).
_EMBED_CACHE: dict[tuple, np.ndarray] = {}
_CACHE_SIZE = 64


def verification(
    stage_dir: Path, model: str, bins: dict[str, str], *, batch_size: int, device: str = "cpu"
) -> dict:
    """10-fold accuracy (%) per protocol; the full results go to ``verification.json``."""
    from synthface.recognition import load_embedder
    from synthface.recognition.evaluation.embed import evaluate_bin

    embedder = load_embedder(model, device=device)
    full, out = {}, {}
    for name, path in bins.items():
        r = evaluate_bin(path, embedder, name=name, batch_size=batch_size)
        full[name] = r.to_dict()
        out[name] = {
            "accuracy": 100.0 * r.accuracy,
            "std": 100.0 * r.accuracy_std,
            "auc": 100.0 * r.roc_auc,
            "fnmr_at_fmr_1pct": 100.0 * r.fnmr_at_fmr_1pct,
            "num_pairs": r.num_pairs,
        }
    atomic_write_json(stage_dir / "verification.json", full)
    return out


def _cached_embedder(model: str, batch_size: int, device: str):
    from synthface.recognition import load_embedder
    from synthface.recognition.frcsyn.scoring import embed_tree_images

    emb = load_embedder(model, device=device)

    def embed(images_dir, relpaths):
        key = (
            model,
            str(images_dir),
            hashlib.sha256("\n".join(relpaths).encode()).hexdigest(),
        )
        if key not in _EMBED_CACHE:
            while len(_EMBED_CACHE) >= _CACHE_SIZE:  # oldest first: memory stays bounded
                _EMBED_CACHE.pop(next(iter(_EMBED_CACHE)))
            _EMBED_CACHE[key] = embed_tree_images(images_dir, relpaths, emb, batch_size=batch_size)
        return _EMBED_CACHE[key]

    return embed


def frcsyn(
    stage_dir: Path,
    *,
    proposed: str,
    baseline: str,
    tree: str,
    calibration: str,
    synthetic_only: bool,
    synthetic_images: int,
    edition: str,
    method: str,
    batch_size: int,
    device: str = "cpu",
) -> dict:
    """FRCSyn Task 1 (AVG, SD, TO on bupt) and Task 2 (AVG) for one training set.

    Synthetic-only sets are scored as sub-tasks x.1, real + synthetic as x.3; the
    baseline system is the real-data recognizer. Datasets the tree lacks are skipped.
    """
    from synthface.recognition.frcsyn.comparisons import list_datasets
    from synthface.recognition.frcsyn.rules import check_training_data, get_subtask
    from synthface.recognition.frcsyn.scoring import score_run

    have = set(list_datasets(Path(tree) / "comparisons"))
    systems = {
        "proposed": _cached_embedder(proposed, batch_size, device),
        "baseline": _cached_embedder(baseline, batch_size, device),
    }
    out: dict = {}
    for task in (1, 2):
        st = get_subtask(f"{task}.{1 if synthetic_only else 3}", edition)
        datasets = [d for d in st.datasets if d in have]
        if not datasets:
            out[f"task{task}"] = {"skipped": f"the tree has none of {', '.join(st.datasets)}"}
            continue
        run = score_run(
            st,
            tree,
            calibration,
            systems,
            stage_dir / f"frcsyn-{st.id}",
            datasets=datasets,
            method=method,
            models={"proposed": proposed, "baseline": baseline},
            plots=False,
        )
        m = run["metrics"]
        p, b = m["systems"]["proposed"], m["systems"]["baseline"]
        keys = ("AVG", "SD", "TO") if task == 1 else ("AVG",)
        out[f"task{task}"] = {
            "subtask": st.id,
            "datasets": datasets,
            "proposed": {k: p[k] for k in keys},
            "baseline": {k: b[k] for k in keys},
            "GAP": m["GAP"],
            "thresholds": {s: run["thresholds"][s]["value"] for s in ("proposed", "baseline")},
            # The world is not CASIA-WebFace: the rule check is informative only.
            "rule_problems": check_training_data(
                st,
                synthetic_images=synthetic_images,
                real_datasets=[] if synthetic_only else ["CASIA-WebFace"],
            ),
        }
    atomic_write_json(stage_dir / "frcsyn.json", out)
    return out


def _mean_std(values: list[float]) -> dict:
    """Mean and sample std (ddof 1; 0 for one value) over seeds."""
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "per_seed": [float(x) for x in v],
    }


def _seed_means(results: dict, protocols: list[str]) -> list[float]:
    return [
        float(np.mean([r["verification"][p]["accuracy"] for p in protocols]))
        for r in results.values()
    ]


def aggregate(results: dict, protocols: list[str]) -> dict:
    """One row of the table from its per-seed evaluations (``{seed: result}``).

    Per protocol: ``accuracy`` (mean over seeds), ``std`` (over seeds), ``fold_std`` (the
    mean over seeds of the 10-fold std) and ``per_seed``; ``mean_accuracy`` is the mean over
    protocols of each seed, then mean +- std over seeds; FRCSyn figures likewise."""
    verification = {}
    for p in protocols:
        acc = _mean_std([r["verification"][p]["accuracy"] for r in results.values()])
        verification[p] = {
            "accuracy": acc["mean"],
            "std": acc["std"],
            "fold_std": float(np.mean([r["verification"][p]["std"] for r in results.values()])),
            "per_seed": acc["per_seed"],
        }
    out = {
        "verification": verification,
        "mean_accuracy": _mean_std(_seed_means(results, protocols)),
    }
    runs = [r["frcsyn"] for r in results.values() if "frcsyn" in r]
    if runs:
        out["frcsyn"] = {}
        for task, first in runs[0].items():
            if "proposed" not in first:  # skipped: the tree lacks the task's datasets
                out["frcsyn"][task] = first
                continue
            row = {"subtask": first["subtask"], "datasets": first["datasets"], "seeds": len(runs)}
            for side in ("proposed", "baseline"):
                stats = {k: _mean_std([r[task][side][k] for r in runs]) for k in first[side]}
                row[side] = {k: v["mean"] for k, v in stats.items()}
                row[f"{side}_std"] = {k: v["std"] for k, v in stats.items()}
            gap = _mean_std([r[task]["GAP"] for r in runs])
            row["GAP"], row["GAP_std"] = gap["mean"], gap["std"]
            out["frcsyn"][task] = row
    return out


def aggregate_gap(results: dict, reference: dict, protocols: list[str]) -> dict:
    """Gap to the reference row in accuracy points (reference minus set, positive = below
    it), paired by seed: the set's seed-s recognizer against the reference's seed-s one;
    per protocol and on the mean over protocols, mean over seeds with ``mean_std``."""
    seeds = [s for s in results if s in reference]
    out = {
        p: float(
            np.mean(
                [
                    reference[s]["verification"][p]["accuracy"]
                    - results[s]["verification"][p]["accuracy"]
                    for s in seeds
                ]
            )
        )
        for p in protocols
    }
    mine = _seed_means({s: results[s] for s in seeds}, protocols)
    ref = _seed_means({s: reference[s] for s in seeds}, protocols)
    gap = _mean_std([r - m for r, m in zip(ref, mine)])
    out["mean"], out["mean_std"] = gap["mean"], gap["std"]
    return out


def load_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
