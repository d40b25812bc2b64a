"""``train(cfg)``: the recognizer training loop on accelerate.

Order of work, as in arcface_torch's ``train_v2.py``: dataset check, accelerator,
seed, model (backbone + margin head), optimizer, resume, loop. The loop body only
trains; logging, verification and checkpoints are callbacks (``callbacks.py``).

Launch on several GPUs with ``accelerate launch --multi_gpu --num_processes N -m
synthface.recognition.training CONFIG`` (see docs/training.md); one process per GPU, each reading
its own resampled shard stream.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.config import config_hash
from synthface.pipeline.errors import ConfigError, InputError, SynthfaceError
from synthface.pipeline.output_paths import check_output_outside
from synthface.recognition.augment import Augmenter
from synthface.recognition.config import TrainConfig
from synthface.recognition.training import callbacks as cb
from synthface.recognition.training.checkpoints import (
    checkpoint_root,
    list_checkpoints,
    load_checkpoint,
    load_head_shard,
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
from synthface.recognition.training.objectives import (
    Objective,
    Step,
    StepOutput,
    build_objectives,
    model_sections,
)
from synthface.recognition.training.optim import LRSchedule, build_optimizer, set_lr


class TrainingDiverged(SynthfaceError):
    """The loss became NaN/inf; the run stopped without saving the damaged weights."""


class TrainModule(nn.Module):
    """Backbone + margin head + training objectives as one module, so DDP wraps all three.

    The step: objectives' ``transform`` (in order), backbone, head, objectives'
    ``loss_terms``; the loss is the head's plus every term (``objectives.py``).

    A backbone may define ``forward_train(images, labels) -> (embeddings, extra_loss or
    None)`` (a privacy protection, ``model.protection``): the step then uses it, and the
    extra loss is the ``protection`` term (MinusFace's regeneration loss; PartialFace's
    per-identity channel subsets depend on the labels).
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module, objectives: Sequence[Objective] = ()
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.objectives = nn.ModuleList(objectives)

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        fields: dict[str, torch.Tensor] | None = None,
    ) -> StepOutput:
        step = Step(images, labels, dict(fields or {}), self)
        for objective in self.objectives:
            step = objective.transform(step)
        train_step = getattr(self.backbone, "forward_train", None)
        extra = None
        if train_step is not None and self.training:
            step.embeddings, extra = train_step(step.x, step.labels)
        else:
            step.embeddings = self.backbone(step.x, **step.backbone_kwargs)
        step.head = out = self.head(step.embeddings, step.labels)
        terms = {"head": out.loss}
        if extra is not None:
            terms["protection"] = extra
        for objective in self.objectives:
            terms.update(objective.loss_terms(step))
        metrics = {}
        with torch.no_grad():
            for objective in self.objectives:
                metrics.update(objective.step_metrics(step))
        return StepOutput(sum(terms.values()), out.logits, out.targets, terms, metrics)


class LossMonitor:
    """Loss and accuracy sums kept on the device; NaN detection without a per-step sync."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.float64)
        self.seen = torch.zeros((), device=device, dtype=torch.float64)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.int64)
        self.terms: dict[str, torch.Tensor] = {}
        self.count = 0

    @torch.no_grad()
    def add(self, step: int, out: StepOutput):
        loss = out.loss.detach()
        bad = ~torch.isfinite(loss)
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        self.loss += loss.double()
        named = {f"loss_{k}": v for k, v in out.terms.items()} | out.metrics
        for name, value in named.items():
            total = self.terms.setdefault(name, torch.zeros_like(self.loss))
            total += value.detach().double()
        self.correct += (out.logits.argmax(1) == out.targets).sum().double()
        self.seen += out.targets.numel()
        self.count += 1

    def pop_means(self) -> tuple[float | None, float | None, dict[str, float]]:
        """Mean loss, accuracy and the named values (``loss_<term>``, metrics) since the
        last call (one host sync)."""
        if not self.count:
            return None, None, {}
        loss = float(self.loss) / self.count
        acc = float(self.correct / self.seen.clamp(min=1))
        terms = {name: float(total) / self.count for name, total in self.terms.items()}
        self.loss.zero_(), self.correct.zero_(), self.seen.zero_()
        for total in self.terms.values():
            total.zero_()
        self.count = 0
        return loss, acc, terms

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

    def objectives(self) -> list[Objective]:
        return list(self.accelerator.unwrap_model(self.model).objectives)

    def head_shard(self) -> tuple[nn.Module, torch.optim.Optimizer] | None:
        """(head, optimizer) when the class centres are sharded over the processes."""
        head = self.accelerator.unwrap_model(self.model).head
        return (head, self.optimizer) if head.sharded else None

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


def build_model(
    cfg: TrainConfig, num_classes: int, rank: int = 0, num_processes: int = 1
) -> TrainModule:
    """Backbone (as the objectives wrap it), margin head and the config's objectives; with
    ``head.shard_classes`` the head holds shard ``rank`` only."""
    from synthface.recognition.backbones import create_backbone
    from synthface.recognition.heads import HEADS, create_head

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
    objectives = build_objectives(cfg, num_classes)
    for objective in objectives:
        backbone = objective.wrap_backbone(backbone)
    shards = {}
    if cfg.head.shard_classes:
        if not HEADS.get(cfg.head.name).supports_sharding:
            raise ConfigError(
                f"head.shard_classes: head {cfg.head.name!r} needs every class centre on "
                "every process; use arcface, cosface or combined, or shard_classes: false"
            )
        shards = {"num_shards": num_processes, "shard_index": rank}
    head = create_head(
        cfg.head.name,
        embedding_dim=cfg.model.embedding_dim,
        num_classes=num_classes,
        **cfg.head.params,
        **shards,
    )
    model = TrainModule(backbone, head, objectives)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _check_head_memory(cfg: TrainConfig, num_classes: int, device: torch.device) -> None:
    """The class-centre matrix with its gradient and optimizer state must fit the device:
    refuse a 10-million-identity run before allocating, not by an OOM kill."""
    from synthface.pipeline.limits import check_memory

    estimate = 16 * num_classes * cfg.model.embedding_dim  # fp32 weight, grad, 2 moments
    what = f"margin head for {num_classes} identities x {cfg.model.embedding_dim} dims"
    hint = "weights, gradients and optimizer state; use fewer identities or a smaller embedding"
    check_memory(estimate, what, hint, device)


def _check_resumable(cfg: TrainConfig, state: dict, path: Path, num_processes: int) -> None:
    """The architecture must match the checkpoint; other changes are allowed."""
    saved = state.get("config") or {}
    with contextlib.suppress(ValueError):  # fields added since then take their defaults
        saved = TrainConfig.model_validate(saved).model_dump(mode="json")
    now = cfg.model_dump(mode="json")
    if cfg.head.shard_classes and state.get("num_processes") != num_processes:
        raise InputError(
            f"{path}: class centres were sharded over {state.get('num_processes')} processes; "
            f"resume with that many (not {num_processes})"
        )
    diffs = []
    for section in model_sections():
        a, b = now.get(section) or {}, saved.get(section) or {}
        if not a or not b:  # a section switched on or off
            diffs += [section] if a or b else []
            continue
        diffs += [f"{section}.{key}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    if diffs:
        raise InputError(
            f"{path}: checkpoint was trained with different {', '.join(diffs)}; "
            "resume needs the same architecture"
        )


def train(
    cfg: TrainConfig,
    *,
    resume: str | None = None,
    stop_after: int | None = None,
    resume_allow_partial: bool = False,
) -> TrainResult:
    """Train a recognizer as ``cfg`` says; ``resume="latest"`` continues the newest checkpoint.

    A damaged newest checkpoint is an error naming the file, unless
    ``resume_allow_partial`` lets it fall back to the newest intact one (saying so).

    ``stop_after`` ends the run after that global step with a checkpoint, leaving the
    schedule as if the run were whole: for jobs with a time limit that resume in chunks.
    The recognizer is exported (and final validation run) only when training completes.
    """
    from accelerate.utils import set_seed

    check_output_outside(cfg.train.output_dir, "train.output_dir", **{"data.train": cfg.data.train})
    info = inspect_dataset(cfg.data)
    out = Path(cfg.train.output_dir)
    accelerator = _accelerator(cfg)
    classes_here = info.num_classes  # a sharded head holds its share on each rank
    if cfg.head.shard_classes:
        classes_here = -(-info.num_classes // accelerator.num_processes)
    _check_head_memory(cfg, classes_here, accelerator.device)
    rank, seed, accum = accelerator.process_index, cfg.train.seed, cfg.train.grad_accum
    set_seed(seed)
    model = build_model(cfg, info.num_classes, rank, accelerator.num_processes)
    if model.head.sharded:  # each rank trains its own centres: DDP must not average them
        from torch.nn.parallel import DistributedDataParallel

        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, [f"head.{name}" for name, _ in model.head.named_parameters()]
        )
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
    ckpt = resolve_resume(out, resume, allow_partial=resume_allow_partial)
    if ckpt is not None:
        # a clear message before key errors
        _check_resumable(cfg, read_state(ckpt), ckpt, accelerator.num_processes)
        state = load_checkpoint(accelerator, ckpt)
        if run.head_shard() is not None:
            load_head_shard(ckpt, rank, *run.head_shard())
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
    for objective in run.objectives():
        objective.prepare(run)
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
            batch = next(batches).to(accelerator.device, non_blocking=True)
            aug_gen.manual_seed(segment_seed(seed + 1, rank, step * accum + micro))
            x = to_model_input(
                batch.images,
                cfg.model.input_size,
                augment=augment,
                generator=aug_gen,
                channels_last=cfg.model.channels_last,
            )
            with accelerator.no_sync(model) if micro < accum - 1 else nullcontext():
                output = model(x, batch.labels, batch.fields)
                accelerator.backward(output.loss / accum)
            run.monitor.add(step + 1, output)
        if cfg.train.clip_grad_norm:  # the backbone only, as arcface_torch
            accelerator.clip_grad_norm_(run.backbone().parameters(), cfg.train.clip_grad_norm)
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


def _segment_batches(run: Run, step: int, every: int):
    """The batch stream of the checkpoint segment holding ``step``, positioned at ``step``.

    Segments start at multiples of ``checkpoint.every_steps`` (or at 0) and each has its
    own seed, so where a run was interrupted does not change what it reads. Resuming
    inside a segment (``--stop-after`` off the checkpoint grid, or a final checkpoint)
    reads and drops the batches the interrupted run had already used; the ``random``
    sampler opens at ``step`` itself, since its batch positions follow from the step.
    """
    cfg, accum = run.cfg, run.cfg.train.grad_accum
    start = (step // every) * every if every else 0
    end = min(run.total_steps, start + every) if every else run.total_steps
    if cfg.data.sampler.kind == "random":  # positions are a function of the step: no replay
        start = step
    batches = open_batches(
        run.info,
        cfg.data,
        num_batches=(end - start) * accum,
        seed=segment_seed(cfg.train.seed, run.accelerator.process_index, start),
        pin_memory=run.accelerator.device.type == "cuda",
        fields={k: f for o in run.objectives() for k, f in o.sample_fields().items()},
        run_seed=cfg.train.seed,
        first_batch=start * accum,
        rank=run.accelerator.process_index,
        num_processes=run.accelerator.num_processes,
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
