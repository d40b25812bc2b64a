"""Train an SDD-FIQA quality regressor on a shard dataset and its pseudo-labels.

A regression of one number per image, minutes on a CPU for the world, so it runs on
one device without accelerate's machinery: the recognizer trainer's data stream
(with the pseudo-label as a per-sample field), device-side input scaling, optimizer
and schedule are reused, and the run is short enough to restart rather than resume.
Writes ``OUTPUT/metrics.csv`` (step, loss, lr) and ``OUTPUT/model/`` (the regressor).
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from synthface.pipeline.atomic import atomic_write_bytes, atomic_write_json
from synthface.pipeline.errors import ConfigError, InputError
from synthface.recognition.quality.config import QualityTrainConfig

LOSSES = {"smooth_l1": F.smooth_l1_loss, "l1": F.l1_loss, "l2": F.mse_loss}
LOG_EVERY = 20


def train_quality(cfg: QualityTrainConfig) -> dict:
    """Train as ``cfg`` says; returns a summary with the model directory and last loss."""
    from synthface.recognition.augment import Augmenter
    from synthface.recognition.config import AugmentConfig
    from synthface.recognition.quality.model import build_quality_model, save_quality_model
    from synthface.recognition.training.data import inspect_dataset, open_batches, to_model_input
    from synthface.recognition.training.fields import KeyedArray
    from synthface.recognition.training.optim import LRSchedule, build_optimizer, set_lr

    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available")
    device = torch.device(
        "cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu"
    )
    info = inspect_dataset(cfg.data)
    labels = KeyedArray(cfg.data.labels, field="data.labels")
    if len(labels) != info.num_samples and info.view is None:  # a view reads a subset
        raise InputError(
            f"data.labels: {cfg.data.labels} has {len(labels)} rows, "
            f"{info.path} {info.num_samples} samples"
        )
    torch.manual_seed(cfg.train.seed)
    model = build_quality_model(
        cfg.model.backbone,
        input_size=cfg.model.input_size,
        params=cfg.model.params,
        dropout=cfg.model.dropout,
        init=cfg.model.init,
    ).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    steps_per_epoch = info.num_samples / cfg.data.batch_size
    total = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    schedule = LRSchedule(cfg.schedule, total, steps_per_epoch)
    augment = Augmenter(AugmentConfig(flip=cfg.flip))
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.train.seed)
    batches = open_batches(
        info, cfg.data, num_batches=total, seed=cfg.train.seed, fields={"quality": labels}
    )
    loss_fn = LOSSES[cfg.loss]
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, window, start = [], [], time.perf_counter()
    model.train()
    for step in range(total):
        lr = cfg.optim.lr * schedule.factor(step)
        set_lr(optimizer, lr)
        batch = next(batches).to(device)
        x = to_model_input(batch.images, cfg.model.input_size, augment=augment, generator=gen)
        loss = loss_fn(model(x), batch.fields["quality"].view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(loss.detach())
        if (step + 1) % LOG_EVERY == 0 or step + 1 == total:
            mean = float(torch.stack(window).mean())
            if not math.isfinite(mean):
                raise ConfigError(f"quality training diverged at step {step + 1}; lower optim.lr")
            rows.append({"step": step + 1, "loss": round(mean, 6), "lr": f"{lr:.6g}",
                         "elapsed_s": round(time.perf_counter() - start, 2)})  # fmt: skip
            window = []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "metrics.csv", buf.getvalue().encode())
    atomic_write_json(out / "config.json", cfg.model_dump(mode="json"))
    model_dir = save_quality_model(model, out / "model", cfg.model_dump(mode="json"))
    return {
        "output_dir": str(out),
        "model_dir": str(model_dir),
        "steps": total,
        "first_loss": rows[0]["loss"],
        "last_loss": rows[-1]["loss"],
    }
