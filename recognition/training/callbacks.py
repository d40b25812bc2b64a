"""Side work of the training loop, each a callable ``callback(global_step, run)``.

As in arcface_torch, the loop body only trains; metrics, progress, verification and
checkpoints hang off it here and run only when their interval comes up. Callbacks run
in list order after every optimizer step; ``close(global_step, run)`` runs once at the
end (final validation, final checkpoint).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from synthface.pipeline.errors import ConfigError, InputError
from synthface.pipeline.limits import quote

if TYPE_CHECKING:
    from synthface.recognition.training.loop import Run


class Callback(Protocol):
    def __call__(self, step: int, run: Run) -> None: ...

    def close(self, step: int, run: Run) -> None: ...


class _CsvLog:
    """Append rows to a CSV; a restart never rewrites what an earlier attempt logged.

    After a resume, steps past the checkpoint that the interrupted attempt had logged are
    logged again: for a step, the last row is the one of the run that carried on.
    """

    def __init__(self, path: Path, fields: tuple[str, ...]) -> None:
        self.path, self.fields = path, fields
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size:
            with open(path, newline="") as fh:
                header = next(csv.reader(fh), [])
            if tuple(header) != fields:
                raise InputError(
                    f"{path}: columns {quote(','.join(header))} are not this run's "
                    f"{','.join(fields)}; move the file away to start a new log"
                )
            return
        with open(path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=fields).writeheader()

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields).writerow(row)


class MetricsLogger:
    """Loss, training accuracy, learning rate and images/s every ``logging.every_steps``.

    Writes ``metrics.csv`` (and TensorBoard scalars if asked) and drives the progress
    bar. With training objectives on, the loss is also split into its terms
    (``loss_head`` and one ``loss_<term>`` column per objective term), followed by the
    objectives' metrics. Reading the loss here is also where a NaN is noticed: the check syncs with the
    device only at these steps, so the loop itself never waits on the GPU.
    """

    FIELDS = ("step", "epoch", "loss", "accuracy", "lr", "images_per_s", "elapsed_s")

    def __init__(self, run: Run, start_step: int) -> None:
        cfg = run.cfg.logging
        self.every = cfg.every_steps
        self.main = run.accelerator.is_main_process
        terms = [f"loss_{t}" for o in run.objectives() for t in o.terms]
        if hasattr(run.backbone(), "forward_train"):  # a protection's own term (MinusFace)
            terms.append("loss_protection")
        metrics = [m for o in run.objectives() for m in o.metrics]
        self.named = (*(("loss_head", *terms) if terms else ()), *metrics)
        fields = (*self.FIELDS, *self.named)
        self.csv = (
            _CsvLog(run.output_dir / "metrics.csv", fields) if (cfg.csv and self.main) else None
        )
        self.tb = None
        if cfg.tensorboard and self.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "logging.tensorboard: needs the tensorboard package (pip install tensorboard)"
                ) from None
            self.tb = SummaryWriter(str(run.output_dir / "tensorboard"), purge_step=start_step)
        self.bar = None
        if cfg.progress and self.main:
            from synthface.pipeline.progress import progress_bar

            self.bar = progress_bar(
                run.total_steps, desc="training", unit="step", initial=start_step
            )
        self.start = time.perf_counter()
        self.window_start = (start_step, self.start)
        self.last: dict = {}

    def __call__(self, step: int, run: Run) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if step % self.every and step != run.total_steps:
            return
        self.flush(step, run)

    def flush(self, step: int, run: Run) -> None:
        run.monitor.check(step, run)
        loss, acc, terms = run.monitor.pop_means()
        if loss is None:
            return
        now = time.perf_counter()
        s0, t0 = self.window_start
        ips = (step - s0) * run.global_batch / max(now - t0, 1e-9)
        self.window_start = (step, now)
        row = {
            "step": step,
            "epoch": round(step / run.steps_per_epoch, 4),
            "loss": round(loss, 6),
            "accuracy": round(acc, 6),
            "lr": f"{run.lr:.6g}",
            "images_per_s": round(ips, 1),
            "elapsed_s": round(now - self.start, 2),
            **{k: round(terms[k], 6) for k in self.named if k in terms},
        }
        self.last = row
        if self.csv is not None:
            self.csv.write(row)
        if self.tb is not None:
            for key in ("loss", "accuracy", "images_per_s", *self.named):
                if key in row:
                    self.tb.add_scalar(f"train/{key}", row[key], step)
            self.tb.add_scalar("train/lr", run.lr, step)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{run.lr:.3g}", img_s=f"{ips:.0f}")

    def close(self, step: int, run: Run) -> None:
        if step != self.window_start[0]:
            self.flush(step, run)
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


class Validator:
    """10-fold verification on ``.bin`` pair sets every ``validation.every_steps``.

    Sets are decoded once into a memory-mapped cache (``validation.py``), not at every
    pass. Every process embeds a slice of each set with the live backbone (flip-sum as
    insightface does) and the slices are gathered to the main process, which scores them
    with :func:`synthface.recognition.evaluation.verification.evaluate_embeddings` (the
    project's one implementation of the protocol) and logs; all processes then meet at a
    barrier, so DDP collectives stay aligned.
    """

    FIELDS = ("step", "set", "accuracy", "accuracy_std", "num_pairs")

    def __init__(self, run: Run, start_step: int) -> None:
        from synthface.recognition.training.validation import open_sets

        cfg = run.cfg.validation
        self.every = cfg.every_steps
        for path in cfg.sets:
            if not Path(path).is_file():
                raise InputError(f"validation.sets: {path}: no such file")
        self.sets = open_sets(run.cfg, run.accelerator) if cfg.sets else []
        self.csv = (
            _CsvLog(run.output_dir / "validation.csv", self.FIELDS)
            if run.accelerator.is_main_process and self.sets
            else None
        )
        self.last_step = -1
        self.results: dict[str, float] = {}

    def __call__(self, step: int, run: Run) -> None:
        if self.sets and self.every and step % self.every == 0:
            self.validate(step, run)

    def close(self, step: int, run: Run) -> None:
        if self.sets and self.last_step != step and step >= run.total_steps:
            self.validate(step, run)

    def validate(self, step: int, run: Run) -> None:
        from synthface.recognition.evaluation.verification import evaluate_embeddings
        from synthface.recognition.training.validation import embed_sharded

        run.monitor.check(step, run)
        self.last_step = step
        backbone = run.backbone()
        was_training = backbone.training
        backbone.eval()
        try:
            for s in self.sets:
                emb = embed_sharded(backbone, s.images, run.cfg, run.accelerator)
                if emb is None:  # not the main process: its slice is gathered already
                    continue
                res = evaluate_embeddings(
                    emb, s.issame, name=s.name, nfolds=run.cfg.validation.folds
                )
                self.results[s.name] = res.accuracy
                if self.csv is not None:
                    self.csv.write(
                        {
                            "step": step,
                            "set": s.name,
                            "accuracy": round(res.accuracy, 6),
                            "accuracy_std": round(res.accuracy_std, 6),
                            "num_pairs": res.num_pairs,
                        }
                    )
                run.say(f"step {step}: {res.summary()}")
        finally:
            backbone.train(was_training)
        run.accelerator.wait_for_everyone()


class Checkpointer:
    """``save_state`` every ``checkpoint.every_steps`` and at the end of the run."""

    def __init__(self, run: Run, start_step: int) -> None:
        self.every = run.cfg.checkpoint.every_steps
        self.last_step = start_step if start_step > 0 else -1  # a resumed run's checkpoint

    def __call__(self, step: int, run: Run) -> None:
        if self.every and step % self.every == 0:
            self.save(step, run)

    def close(self, step: int, run: Run) -> None:
        if self.last_step != step:
            self.save(step, run)

    def save(self, step: int, run: Run) -> None:
        from synthface.recognition.training.checkpoints import save_checkpoint

        run.monitor.check(step, run)  # never publish weights that saw a NaN
        save_checkpoint(
            run.accelerator,
            run.output_dir,
            step,
            run.trainer_state(step),
            run.cfg.checkpoint.keep,
            head_shard=run.head_shard(),
        )
        self.last_step = step
        run.last_checkpoint = step
