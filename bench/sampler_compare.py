"""Stream vs uniform random-access batches: the world recognizer trained both ways, equal steps.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sampler_compare.py --out out/bench/sampler_compare32
        --set model.input_size=32 --set train.epochs=8 --set logging.progress=false
    # the docs/benchmarks.md runs: ~10 min a sampler on one contended core, plus 4 min of render
    ... --samplers stream --stream-buffer 12000 --tag=-buffer12000     # the i.i.d. control

Shards hold whole identities, so a stream whose shuffle buffer holds a few identities
builds batches from those few, while arcface_torch draws every batch from a full shuffle
of the set. The world is written in shards of ``--shard-samples`` (50 identities each by
default) and the stream's buffer is sized like the CASIA recipe's
(configs/recognition/arcface_torch_r50_casia.yaml: 2000 samples ~ 40 identities of
10,575, batch 128, ~3 images per identity and batch): ``--stream-buffer 400`` holds 20 of
the world's identities for a batch of 64. Each sampler trains
``configs/recognition/world_tiny.yaml`` (with ``--set`` overrides) for the same number of
steps, one after the other, and is scored on the world's held-out LFW analogue by the
training loop's own end-of-run validation (10 folds).

Prints one JSON document (also written to ``OUT/report.json``); images/s is training
steps x batch / the loop's elapsed time (validation excluded). Numbers depend on load.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/bench/sampler_compare")
    p.add_argument("--config", default=str(REPO / "configs/recognition/world_tiny.yaml"))
    p.add_argument("--identities", type=int, default=500)
    p.add_argument("--per-identity", type=int, default=20)
    p.add_argument("--shard-samples", type=int, default=1000, help="samples per world shard")
    p.add_argument("--stream-buffer", type=int, default=400, help="the stream's shuffle buffer")
    p.add_argument("--samplers", default="stream,random", help="comma-separated, run in order")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="", help="suffix of the run folders and the report name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    import torch

    from synthface.pipeline.config import load_config
    from synthface.pipeline.world import make_protocol, make_world_dataset
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.training import train

    out = Path(args.out)
    base = load_config(args.config, TrainConfig, args.overrides)
    size = base.model.input_size
    t0 = time.perf_counter()
    world = out / "world-train"
    if not (world / "dataset.json").exists():
        make_world_dataset(world, identities=args.identities, per_identity=args.per_identity,
                           size=size, seed=args.seed, split="train",
                           max_samples_per_shard=args.shard_samples)  # fmt: skip
    pairs = out / "pairs" / "lfw.bin"
    if not pairs.exists():
        make_protocol(out / "pairs", "lfw", folds=10, pairs_per_fold=300, size=size,
                      seed=args.seed)  # fmt: skip
    render_s = round(time.perf_counter() - t0, 1)

    runs = {}
    for kind in args.samplers.split(","):
        cfg = base.model_copy(deep=True)
        cfg.data.train = str(world)
        cfg.data.sampler.kind = kind
        cfg.data.shuffle_buffer = args.stream_buffer
        cfg.validation.sets = [str(pairs)]
        cfg.train.output_dir = str(out / f"run-{kind}{args.tag}")
        shutil.rmtree(cfg.train.output_dir, ignore_errors=True)
        t0 = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - t0
        with open(Path(cfg.train.output_dir) / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        elapsed = float(rows[-1]["elapsed_s"])
        runs[kind] = {
            "steps": result.global_step,
            "train_wall_s": round(wall, 1),
            "loop_s": round(elapsed, 1),
            "images_per_s": round(result.global_step * cfg.data.batch_size / elapsed, 1),
            "final_train_accuracy": float(rows[-1]["accuracy"]),
            "heldout_lfw_10fold": round(result.validation.get("lfw", -1.0), 4),
        }
        with open(Path(cfg.train.output_dir) / "validation.csv", newline="") as fh:
            last = list(csv.DictReader(fh))[-1]
        runs[kind]["heldout_lfw_10fold_std"] = round(float(last["accuracy_std"]), 4)
        print(json.dumps({kind: runs[kind]}), flush=True)

    report = {
        "machine": f"{torch.get_num_threads()} torch thread(s), CPU",
        "world": f"{args.identities} ids x {args.per_identity} imgs, {size}px, "
        f"{args.shard_samples} samples/shard",
        "config": args.config,
        "overrides": args.overrides,
        "stream_buffer": args.stream_buffer,
        "render_s": render_s,
        "runs": runs,
    }
    print(json.dumps(report, indent=2))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"report{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
