"""Recognizer training throughput by process count, through the project's launcher.

    python bench/train_launch.py --data DATASET --processes 1 2            # CPU, gloo
    python bench/train_launch.py --data DATASET --processes 1 2 --flow     # the Prefect flow
    python bench/train_launch.py --data DATASET --device cuda --processes 1 8 \\
        --backbone ir50 --input-size 112 --batch-size 256 --precision bf16 --workers 6

Each process count is one real training run started the way the ``train-recognizer``
flow starts it (``synthface.recognition.training.launch``: ``accelerate launch -m
synthface.recognition.training``; with ``--flow`` the flow itself on Prefect's ephemeral
API), in its own output directory. images/s is the global rate that the trainer logs to
``metrics.csv`` (``processes x batch_size`` images per step), averaged over the logging
windows after the first (start-up, first batches). Scaling efficiency = images/s with N
processes / (N x images/s with one). ``--workers`` is per process, as in the config.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def run_one(args: argparse.Namespace, processes: int, out: Path) -> dict:
    from synthface.pipeline.config import validate_config
    from synthface.recognition.config import TrainConfig

    cfg = validate_config(
        {
            "data": {"train": args.data, "batch_size": args.batch_size,
                     "num_workers": args.workers, "shuffle_buffer": args.shuffle_buffer},
            "model": {"backbone": args.backbone, "input_size": args.input_size,
                      "embedding_dim": args.embedding_dim,
                      "channels_last": args.device == "cuda"},
            "head": {"name": "cosface", "params": {"scale": 16.0, "margin": 0.2}},
            "optim": {"lr": 0.1},
            "train": {"output_dir": str(out), "max_steps": args.steps, "device": args.device,
                      "mixed_precision": args.precision},
            "checkpoint": {"every_steps": 0, "keep": 1},
            "logging": {"every_steps": args.log_every, "progress": False},
        },
        TrainConfig,
    )  # fmt: skip
    t0 = time.perf_counter()
    if args.flow:
        from synthface.flows.defaults import prepare_prefect_env

        prepare_prefect_env()
        from synthface.flows.training import train_recognizer

        summary = train_recognizer(config=cfg, processes=processes)
    else:
        from synthface.recognition.training.launch import Topology, launch_training

        summary = launch_training(cfg, Topology(processes), log=lambda line: None)
    wall = time.perf_counter() - t0
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    steady = [float(r["images_per_s"]) for r in rows[1:]] or [float(rows[-1]["images_per_s"])]
    return {
        "processes": processes,
        "steps": summary["global_step"],
        "images_per_s": round(statistics.mean(steady), 1),
        "images_per_s_windows": [float(r["images_per_s"]) for r in rows],
        "training_s": float(rows[-1]["elapsed_s"]),
        "wall_s": round(wall, 1),  # with process start-up and, with --flow, Prefect
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="shard dataset directory")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--input-size", type=int, default=48)
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--workers", type=int, default=1, help="loader workers per process")
    p.add_argument("--shuffle-buffer", type=int, default=2000)
    p.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--flow", action="store_true", help="run the train-recognizer flow")
    p.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="train-launch-"))
    results = []
    for n in args.processes:
        out = root / f"p{n}"
        shutil.rmtree(out, ignore_errors=True)
        results.append(run_one(args, n, out))
        print(json.dumps(results[-1]), file=sys.stderr)
    base = next((r["images_per_s"] for r in results if r["processes"] == 1), None)
    for r in results:
        if base:
            r["scaling_efficiency"] = round(r["images_per_s"] / (r["processes"] * base), 3)
    out = {
        "launcher": "flow" if args.flow else "launch_training",
        "device": args.device,
        "backbone": args.backbone,
        "input_size": args.input_size,
        "batch_size_per_process": args.batch_size,
        "loader_workers_per_process": args.workers,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "runs": results,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    if not args.out:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
