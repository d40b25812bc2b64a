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
# and bupt, so each is embedded once per stage rather than once per sub-task.
_EMBED_CACHE: dict[tuple, np.ndarray] = {}
_CACHE_SIZE = 8


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


def gaps(results: dict[str, dict], real: str = "real") -> dict[str, dict[str, float]]:
    """Gap to real per protocol, in accuracy points: real minus the set (positive = below real)."""
    base = results[real]["verification"]
    out = {}
    for name, res in results.items():
        if name == real:
            continue
        out[name] = {
            p: base[p]["accuracy"] - v["accuracy"]
            for p, v in res["verification"].items()
            if p in base
        }
    return out


def load_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
