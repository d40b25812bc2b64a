"""Training throughput: the real shard loader vs in-memory tensors, same model and step.

    python bench/train_throughput.py                       # CPU, iResNet-50 at 112x112
    python bench/train_throughput.py --device cuda --precision bf16 --batch-size 512 \\
        --workers 14 --steps 100 --channels-last --data DATASET_DIR   # a GPU (see bench/gpu)

Three numbers, all images/s: (1) training fed from one fixed batch already on the
device — the model's ceiling; (2) training fed by ``open_batches`` — the production
stream (webdataset shards, JPEG decode in loader workers, host-to-device copy,
normalisation and augmentation on the device); (3) the loader alone. The ratio (2)/(1)
is what the loader costs. MFU = model FLOPs per image (forward + backward, counted by
``torch.utils.flop_counter`` on the real model) x images/s / peak FLOP/s.

Without ``--data`` a dataset of random-texture 112x112 JPEG identities is written to a
temporary directory first (the loader cost depends on JPEG size and count, not content).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODES = ("in_memory", "shard_loader", "loader_only")


def make_dataset(out: Path, *, identities: int, per_identity: int, size: int) -> Path:
    """Random smooth-texture JPEGs (about the byte size of real aligned face crops)."""
    from synthface.pipeline.shards import DatasetWriter, Sample, encode_image

    rng = np.random.default_rng(0)
    writer = DatasetWriter(
        out, config={"bench": "train_throughput", "size": size}, max_samples=2000
    )
    for i in range(identities):
        base = rng.integers(0, 256, (size // 8, size // 8, 3)).astype(np.float32)
        big = np.kron(base, np.ones((8, 8, 1), np.float32))
        for j in range(per_identity):
            img = np.clip(big + rng.normal(0, 12, big.shape), 0, 255).astype(np.uint8)
            writer.add(Sample(identity=i, index=j, image=encode_image(img, "jpg", quality=90)))
    writer.close()
    return out


def step_flops(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    """FLOPs of one forward + backward pass over ``x`` (counted, not estimated)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(x, labels).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="shard dataset dir (default: generate one)")
    p.add_argument("--backbone", default="ir50")
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=8, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--num-classes", type=int, default=1000, help="identities when generating")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="device peak for MFU (H200 dense bf16: 989); 0 = skip MFU")  # fmt: skip
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                   help="which of the three measurements to run (default: all)")  # fmt: skip
    args = p.parse_args(argv)

    from synthface.pipeline.config import validate_config
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.training import build_model
    from synthface.recognition.training.data import inspect_dataset, open_batches, to_model_input
    from synthface.recognition.training.optim import build_optimizer

    tmp = None
    data = args.data
    if data is None:
        tmp = tempfile.TemporaryDirectory(prefix="train-throughput-")
        per = 4
        n_ids = max(2, math.ceil((args.steps + args.warmup + 2) * args.batch_size / per))
        n_ids = min(n_ids, args.num_classes)
        t0 = time.perf_counter()
        data = str(make_dataset(Path(tmp.name) / "ds", identities=n_ids, per_identity=per,
                                size=args.input_size))  # fmt: skip
        print(f"generated {n_ids * per} JPEGs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    cfg = validate_config(
        {
            "data": {"train": data, "batch_size": args.batch_size, "num_workers": args.workers,
                     "shuffle_buffer": 2000},
            "model": {"backbone": args.backbone, "input_size": args.input_size,
                      "channels_last": args.channels_last},
            "train": {"device": args.device, "mixed_precision": args.precision},
        },
        TrainConfig,
    )  # fmt: skip
    info = inspect_dataset(cfg.data)
    device = torch.device(args.device)
    model = build_model(cfg, info.num_classes).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    dtype = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    fwd = torch.compile(model) if args.compile else model

    def train_step(images: torch.Tensor, labels: torch.Tensor) -> None:
        x = to_model_input(images.to(device, non_blocking=True), args.input_size,
                           channels_last=args.channels_last)  # fmt: skip
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = fwd(x, labels.to(device, non_blocking=True)).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(batches, step) -> float:
        for _ in range(args.warmup):
            step(*next(batches)[:2])
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(*next(batches)[:2])
        sync()
        return args.steps * args.batch_size / (time.perf_counter() - t0)

    n = (args.steps + args.warmup) * 3
    fixed = next(open_batches(info, cfg.data, num_batches=1, seed=1))
    fixed = (fixed[0].to(device), fixed[1].to(device))
    model.train()
    runs = {
        "in_memory": lambda: timed(itertools.repeat(fixed), train_step),
        "shard_loader": lambda: timed(open_batches(info, cfg.data, num_batches=n, seed=2,
                                                   pin_memory=device.type == "cuda"), train_step),
        "loader_only": lambda: timed(open_batches(info, cfg.data, num_batches=n, seed=3),
                                     lambda images, labels: None),
    }  # fmt: skip
    results = {mode: runs[mode]() for mode in MODES if mode in args.modes}

    x = to_model_input(fixed[0][:2], args.input_size, channels_last=args.channels_last)
    flops_per_image = step_flops(model, x, fixed[1][:2]) / 2
    out = {
        "backbone": args.backbone,
        "input_size": args.input_size,
        "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "loader_workers": args.workers,
        "precision": args.precision,
        "images_per_s": {k: round(v, 2) for k, v in results.items()},
        "gflops_per_image_fwd_bwd": round(flops_per_image / 1e9, 2),
    }
    if {"shard_loader", "in_memory"} <= set(results):
        out["loader_vs_in_memory"] = round(results["shard_loader"] / results["in_memory"], 3)
    if args.peak_tflops:
        out["mfu"] = {
            k: round(results[k] * flops_per_image / (args.peak_tflops * 1e12), 4)
            for k in ("in_memory", "shard_loader")
            if k in results
        }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
