"""Fidelity of the training stage: train on the procedural face world, verify unseen identities.

    OMP_NUM_THREADS=1 python bench/recognition_fidelity.py   # 500 ids x 20 imgs
    python bench/recognition_fidelity.py --out /tmp/fid --set train.epochs=10

The rendered world is kept in ``--out`` and reused by later runs; the training run is
redone each time. On a shared CPU keep ``OMP_NUM_THREADS=1`` (oversubscribed OpenMP
threads made the same run 20x slower here).

1. Render the training world (``split="train"``) and the world's LFW analogue
   (``synthface.pipeline.world.make_protocol(..., "lfw")``): 10 identity-disjoint folds of 300
   genuine + 300 impostor pairs of *held-out* identities (the eval seed stream), as an
   insightface ``.bin``.
2. Train ``configs/recognition/world_tiny.yaml`` (the run validates on that ``.bin`` at
   the end through ``synthface.recognition.evaluation``).
3. Reload the exported recognizer with ``synthface.recognition.embedder.load_embedder`` and score
   the pairs again, next to the same backbone with random weights (the baseline the
   training has to beat; chance is 50 %).

Target: 10-fold accuracy >= 95 % on the held-out identities within 10 minutes of a
2-core CPU. Prints one JSON document; numbers depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def score(embedder, images: list[bytes], issame, name: str) -> dict:
    from synthface.pipeline.shards import decode_image
    from synthface.recognition.evaluation.verification import evaluate_embeddings

    arr = np.stack([decode_image(b) for b in images])
    emb = embedder.embed(arr, flip=True)
    res = evaluate_embeddings(emb, np.asarray(issame), name=name, nfolds=10)
    return {"accuracy": round(res.accuracy, 4), "accuracy_std": round(res.accuracy_std, 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/bench/recognition_fidelity")
    p.add_argument("--config", default=str(REPO / "configs/recognition/world_tiny.yaml"))
    p.add_argument("--identities", type=int, default=500)
    p.add_argument("--per-identity", type=int, default=20)
    p.add_argument("--protocol", default="lfw", help="world verification protocol")
    p.add_argument("--pairs-per-fold", type=int, default=300, help="genuine (= impostor) pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    import torch

    from synthface.pipeline.config import load_config
    from synthface.pipeline.formats.verification_bin import read_bin
    from synthface.pipeline.world import make_protocol, make_world_dataset
    from synthface.recognition.checkpoint import save_recognizer
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.embedder import load_embedder
    from synthface.recognition.training import build_model, train

    out = Path(args.out)
    cfg = load_config(args.config, TrainConfig, args.overrides)
    size = cfg.model.input_size
    timings = {}

    t0 = time.perf_counter()
    train_dir = out / "world-train"
    if not (train_dir / "dataset.json").exists():
        make_world_dataset(train_dir, identities=args.identities,
                           per_identity=args.per_identity, size=size, seed=args.seed,
                           split="train")  # fmt: skip
    pairs_bin = out / "pairs" / f"{args.protocol}.bin"
    if not pairs_bin.exists():
        make_protocol(out / "pairs", args.protocol, folds=10, pairs_per_fold=args.pairs_per_fold,
                      size=size, seed=args.seed)  # fmt: skip
    timings["render_s"] = round(time.perf_counter() - t0, 1)
    images, issame = read_bin(pairs_bin)

    cfg.data.train = str(train_dir)
    cfg.train.output_dir = str(out / "run")
    shutil.rmtree(out / "run", ignore_errors=True)  # a fresh run each time
    cfg.validation.sets = [str(pairs_bin)]

    # baseline: the same backbone with its initial (random) weights
    torch.manual_seed(cfg.train.seed)
    untrained = build_model(cfg, args.identities).backbone
    save_recognizer(untrained, out / "untrained", cfg.model_dump(mode="json"))
    baseline = score(load_embedder(out / "untrained"), images, issame, "untrained")

    t0 = time.perf_counter()
    result = train(cfg)
    timings["train_s"] = round(time.perf_counter() - t0, 1)
    trained = score(load_embedder(result.model_dir), images, issame, "trained")

    report = {
        "machine": f"{torch.get_num_threads()} torch threads, CPU",
        "world": {
            "train": f"{args.identities} ids x {args.per_identity} imgs, {size}px",
            "heldout_protocol": args.protocol,
            "pairs": len(issame),
        },
        "config": args.config,
        "overrides": args.overrides,
        "steps": result.global_step,
        "final_train_metrics": result.metrics,
        "timings": timings,
        "verification_10fold": {
            "untrained_backbone": baseline,
            "trained_in_training_loop": round(result.validation.get(args.protocol, -1.0), 4),
            "trained_reloaded": trained,
        },
        "target": 0.95,
        "meets_target": trained["accuracy"] >= 0.95,
    }
    print(json.dumps(report, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
