"""``train(cfg)``: the recognizer training loop on accelerate.

Order of work, as in arcface_torch's ``train_v2.py``: dataset check, accelerator,
seed, model (backbone + margin head), optimizer, resume, loop. The loop body only
trains; logging, verification and checkpoints are callbacks (``callbacks.py``).

Launch on several GPUs with ``accelerate launch --multi_gpu --num_processes N -m
synthface.recognition.training CONFIG`` (see docs/training.md); one process per GPU, each reading
its own resampled shard stream.
"""

from __future__ import annotations

import math
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.config import config_hash
from synthface.pipeline.errors import ConfigError, InputError, SynthfaceError
from synthface.recognition.augment import Augmenter
from synthface.recognition.config import TrainConfig
from synthface.recognition.training import callbacks as cb
from synthface.recognition.training.checkpoints import (
    checkpoint_root,
    list_checkpoints,
    load_checkpoint,
    read_state,
    resolve_resume,
)
from synthface.recognition.training.data import (
    DatasetInfo,
    inspect_dataset,
    open_batches,
    segment_seed,
    to_model_input,
)
from synthface.recognition.training.optim import LRSchedule, build_optimizer, set_lr


class TrainingDiverged(SynthfaceError):
    """The loss became NaN/inf; the run stopped without saving the damaged weights."""


class TrainModule(nn.Module):
    """Backbone + margin head as one module, so DDP wraps (and syncs) both.

    With teacher embeddings, ``distill_weight * mean(1 - cos(student, teacher))`` is added
    to the head's loss (the teacher itself stays outside: frozen, not checkpointed).

    Extension point: a backbone may define ``forward_train(images, labels) -> (embeddings,
    extra_loss or None)``; the loop then trains with it and adds ``extra_loss`` to the
    head's loss. Objectives beside the margin loss (MinusFace's regeneration term) and
    label-dependent input transforms (PartialFace's per-identity channel subsets) plug in
    there, without another training loop.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, distill_weight: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.distill_weight = distill_weight

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None
    ):
        step = getattr(self.backbone, "forward_train", None)
        emb, extra = step(images, labels) if step is not None else (self.backbone(images), None)
        out = self.head(emb, labels)
        loss = out.loss if extra is None else out.loss + extra
        if teacher is not None:
            cos = nn.functional.cosine_similarity(emb.float(), teacher.float(), dim=1)
            loss = loss + self.distill_weight * (1 - cos).mean()
        return loss, out.logits, out.targets


class LossMonitor:
    """Loss and accuracy sums kept on the device; NaN detection without a per-step sync."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.float64)
        self.seen = torch.zeros((), device=device, dtype=torch.float64)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.int64)
        self.count = 0

    @torch.no_grad()
    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor):
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        self.loss += loss.detach().double()
        self.correct += (logits.argmax(1) == targets).sum().double()
        self.seen += targets.numel()
        self.count += 1

    def pop_means(self) -> tuple[float | None, float | None]:
        if not self.count:
            return None, None
        loss = float(self.loss) / self.count
        acc = float(self.correct / self.seen.clamp(min=1))
        self.loss.zero_(), self.correct.zero_(), self.seen.zero_()
        self.count = 0
        return loss, acc

    def check(self, step: int, run: Run) -> None:
        bad = int(run.accelerator.reduce(self.first_bad.clone(), reduction="max"))
        if bad < 0:
            return
        last = run.last_checkpoint
        where = (
            f"the last good checkpoint is {checkpoint_root(run.output_dir)}/step-{last:08d}"
            if last is not None
            else "no checkpoint was written before it"
        )
        raise TrainingDiverged(
            f"loss became NaN/inf at step {bad} (lr {run.lr:.4g}); training stopped at step "
            f"{step} without saving; {where}. Lower optim.lr, set train.clip_grad_norm or "
            f"use bf16 instead of fp16, then rerun with --resume latest"
        )


@dataclass
class Run:
    """The live objects of one run, handed to callbacks with the global step."""

    cfg: TrainConfig
    accelerator: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    info: DatasetInfo
    output_dir: Path
    total_steps: int
    steps_per_epoch: float
    global_batch: int
    monitor: LossMonitor
    lr: float = 0.0
    last_checkpoint: int | None = None

    def backbone(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model).backbone

    def trainer_state(self, step: int) -> dict:
        return {
            "global_step": step,
            "epoch": step / self.steps_per_epoch,
            "total_steps": self.total_steps,
            "num_processes": self.accelerator.num_processes,
            "config": self.cfg.model_dump(mode="json"),
            "config_hash": config_hash(self.cfg),
        }

    def say(self, message: str) -> None:
        if self.accelerator.is_main_process and self.cfg.logging.progress:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    completed: bool
    model_dir: Path | None
    checkpoint: Path | None
    metrics: dict = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    is_main_process: bool = True


def _accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available")
    cpu = want == "cpu" or not torch.cuda.is_available()
    if cpu and cfg.train.mixed_precision == "fp16":
        raise ConfigError("train.mixed_precision: 'fp16' needs a CUDA device (use 'bf16' on CPU)")
    # A previous run in this process may have fixed another precision in accelerate's
    # shared state; the process group (PartialState) is kept.
    AcceleratorState._reset_state()
    return Accelerator(
        cpu=cpu,
        mixed_precision=cfg.train.mixed_precision,
        dynamo_backend="inductor" if cfg.model.compile else "no",
        # gradients live in DDP's all-reduce buckets: one copy of them, not two
        kwargs_handlers=[DistributedDataParallelKwargs(gradient_as_bucket_view=True)],
    )


def build_model(cfg: TrainConfig, num_classes: int) -> TrainModule:
    from synthface.recognition.backbones import create_backbone
    from synthface.recognition.heads import create_head

    if cfg.model.protection is not None:
        from synthface.recognition.privacy import create_protected

        backbone = create_protected(
            cfg.model.protection.name,
            backbone=cfg.model.backbone,
            backbone_params=cfg.model.params,
            input_size=cfg.model.input_size,
            embedding_dim=cfg.model.embedding_dim,
            **cfg.model.protection.params,
        )
    else:
        backbone = create_backbone(
            cfg.model.backbone,
            input_size=cfg.model.input_size,
            embedding_dim=cfg.model.embedding_dim,
            **cfg.model.params,
        )
    head = create_head(
        cfg.head.name,
        embedding_dim=cfg.model.embedding_dim,
        num_classes=num_classes,
        **cfg.head.params,
    )
    model = TrainModule(backbone, head, cfg.distill.weight if cfg.distill.teacher else 0.0)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _check_resumable(cfg: TrainConfig, state: dict, path: Path) -> None:
    """The architecture must match the checkpoint; other changes are allowed."""
    saved = state.get("config") or {}
    now = cfg.model_dump(mode="json")
    diffs = [
        f"{section}.{key}"
        for section in ("model", "head")
        for key in sorted(set(now[section]) | set(saved.get(section, {})))
        if now[section].get(key) != saved.get(section, {}).get(key)
    ]
    if diffs:
        raise InputError(
            f"{path}: checkpoint was trained with different {', '.join(diffs)}; "
            "resume needs the same model and head"
        )


def train(
    cfg: TrainConfig, *, resume: str | None = None, stop_after: int | None = None
) -> TrainResult:
    """Train a recognizer as ``cfg`` says; ``resume="latest"`` continues the newest checkpoint.

    ``stop_after`` ends the run after that global step with a checkpoint, leaving the
    schedule as if the run were whole: for jobs with a time limit that resume in chunks.
    The recognizer is exported (and final validation run) only when training completes.
    """
    from accelerate.utils import set_seed

    info = inspect_dataset(cfg.data)
    out = Path(cfg.train.output_dir)
    accelerator = _accelerator(cfg)
    rank, seed, accum = accelerator.process_index, cfg.train.seed, cfg.train.grad_accum
    # before anything is written, and before seeding: a checkpoint teacher is built (random
    # init, then its weights) and must not shift the student's initialisation
    teacher = _load_teacher(cfg, accelerator.device)
    set_seed(seed)
    model = build_model(cfg, info.num_classes)
    optimizer = build_optimizer(model, cfg.optim)
    model, optimizer = accelerator.prepare(model, optimizer)

    global_batch = cfg.data.batch_size * accelerator.num_processes * accum
    steps_per_epoch = info.num_samples / global_batch
    total = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    schedule = LRSchedule(cfg.schedule, total, steps_per_epoch)
    run = Run(
        cfg,
        accelerator,
        model,
        optimizer,
        info,
        out,
        total,
        steps_per_epoch,
        global_batch,
        LossMonitor(accelerator.device),
    )

    step = 0
    ckpt = resolve_resume(out, resume)
    if ckpt is not None:
        _check_resumable(cfg, read_state(ckpt), ckpt)  # a clear message before key errors
        state = load_checkpoint(accelerator, ckpt)
        step = run.last_checkpoint = state["global_step"]
        run.say(f"resumed from {ckpt} at step {step}")
    elif list_checkpoints(out):
        raise InputError(
            f"{out}: holds checkpoints of an earlier run; pass --resume latest to continue "
            "it, or choose another train.output_dir"
        )
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "config.json", (cfg.model_dump_json(indent=2) + "\n").encode())
    callbacks = [cb.MetricsLogger(run, step), cb.Validator(run, step), cb.Checkpointer(run, step)]

    augment = Augmenter(cfg.augment)
    augment = augment if augment.active else None
    aug_gen = torch.Generator(device=accelerator.device)
    every = cfg.checkpoint.every_steps
    batches = None
    model.train()
    end = min(total, stop_after) if stop_after else total
    while step < end:
        if batches is None:
            batches = _segment_batches(run, step, every)
        run.lr = cfg.optim.lr * schedule.factor(step)
        set_lr(optimizer, run.lr)
        for micro in range(accum):
            images, labels = next(batches)
            aug_gen.manual_seed(segment_seed(seed + 1, rank, step * accum + micro))
            x = to_model_input(
                images.to(accelerator.device, non_blocking=True),
                cfg.model.input_size,
                augment=augment,
                generator=aug_gen,
                channels_last=cfg.model.channels_last,
            )
            labels = labels.to(accelerator.device, non_blocking=True)
            t_emb = teacher(x) if teacher is not None else None
            with accelerator.no_sync(model) if micro < accum - 1 else nullcontext():
                loss, logits, targets = model(x, labels, t_emb)
                accelerator.backward(loss / accum)
            run.monitor.add(step + 1, loss, logits, targets)
        if cfg.train.clip_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        for callback in callbacks:
            callback(step, run)
        if every and step % every == 0:
            batches = None
    for callback in callbacks:
        callback.close(step, run)

    done = step >= total
    model_dir = _export(run, out / "model") if done and accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    found = list_checkpoints(out)
    return TrainResult(
        output_dir=out,
        global_step=step,
        completed=done,
        model_dir=model_dir,
        checkpoint=found[-1][1] if found else None,
        metrics=callbacks[0].last,
        validation=dict(callbacks[1].results),
        is_main_process=accelerator.is_main_process,
    )


class _Teacher:
    """The frozen teacher: resizes the student's input to its own size, no gradients."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.hw = tuple(model.input_size)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        if tuple(x.shape[-2:]) != self.hw:
            x = nn.functional.interpolate(x, size=self.hw, mode="bilinear", antialias=True)
        return self.model(x).float()


def _load_teacher(cfg: TrainConfig, device: torch.device) -> _Teacher | None:
    if not cfg.distill.teacher:
        return None
    from synthface.recognition.onnx_torch import load_recognizer_module

    model = load_recognizer_module(cfg.distill.teacher, device)
    if int(model.embedding_dim) != cfg.model.embedding_dim:
        raise ConfigError(
            f"distill.teacher {cfg.distill.teacher}: {model.embedding_dim}-d embeddings, but "
            f"model.embedding_dim is {cfg.model.embedding_dim}; they must be equal"
        )
    if getattr(model, "input_channels", 3) != 3 or cfg.model.params.get("input_channels", 3) != 3:
        raise ConfigError(
            f"distill.teacher {cfg.distill.teacher}: teacher and student must both take RGB "
            "images (block-DCT students cannot share the teacher's input)"
        )
    return _Teacher(model)


def _segment_batches(run: Run, step: int, every: int):
    """The batch stream of the checkpoint segment holding ``step``, positioned at ``step``.

    Segments start at multiples of ``checkpoint.every_steps`` (or at 0) and each has its
    own seed, so where a run was interrupted does not change what it reads. Resuming
    inside a segment (``--stop-after`` off the checkpoint grid, or a final checkpoint)
    reads and drops the batches the interrupted run had already used.
    """
    cfg, accum = run.cfg, run.cfg.train.grad_accum
    start = (step // every) * every if every else 0
    end = min(run.total_steps, start + every) if every else run.total_steps
    batches = open_batches(
        run.info,
        cfg.data,
        num_batches=(end - start) * accum,
        seed=segment_seed(cfg.train.seed, run.accelerator.process_index, start),
        pin_memory=run.accelerator.device.type == "cuda",
    )
    if step > start:
        run.say(f"fast-forwarding {(step - start) * accum} batches to step {step}")
        for _ in range((step - start) * accum):
            next(batches)
    return batches


def _export(run: Run, model_dir: Path) -> Path:
    """The trained backbone as a standalone recognizer (safetensors + config.json)."""
    from synthface.recognition.checkpoint import save_recognizer

    save_recognizer(run.backbone(), model_dir, run.cfg.model_dump(mode="json"))
    return model_dir
