"""Evaluation-oriented knowledge distillation (EKD; Huang et al., CVPR 2022) as an objective.

Verification is judged at a few false-positive rates, so EKD distils what matters there:
where each pair similarity ranks against the thresholds at those FPRs, student vs
teacher. Notation (paper -> code), per batch:

* ``S``, ``T``: cosine similarities of the student's and the teacher's embeddings over
  pairs ``i < j``; ``+`` same identity, ``-`` different identities;
* anchors ``a`` (``fpr_anchors``, 1e-1 ... 1e-6): ``tau_a`` = the negative similarity at
  rank ``floor(|N-| * fpr)`` (descending); thresholds ``T_a <- m tau_a + (1 - m) T_a``
  (``m = 0.01``; the first batch sets them), kept separately for student and teacher as
  buffers, so a checkpoint resumes them exactly;
* soft rank ``R(x) = Σ_a sigmoid((x - T_a) / 0.01)``;
* ``L = 0.02 MSE(R_S(S+), R_T(T+)) + 0.01 MSE(R_S(S-_top), R_T(T-_top))`` with ``top``
  the 2000 highest student negatives (the critical pairs near the FPR anchors); added
  to the head's loss.

The teacher is frozen, so it needs no gradient and no torch: its embeddings of the
training set are computed once (``synthface recognition embed --shards``, here called
automatically when ``ekd.cache`` is absent) and read per sample key in the loader,
from a torch checkpoint or any ONNX recognizer alike. ``ekd.online: true`` runs a
torch teacher on every augmented batch instead.

Under DDP the thresholds are module buffers, which DDP broadcasts from rank 0 each
step: every rank ranks against rank 0's estimates (as BatchNorm statistics are shared).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from synthface.pipeline.atomic import atomic_write_json, file_sha256
from synthface.pipeline.errors import ConfigError, InputError
from synthface.recognition.config import EKDConfig, TrainConfig
from synthface.recognition.training.fields import KeyedArray
from synthface.recognition.training.objectives import Objective, Step, register_objective

if TYPE_CHECKING:
    from synthface.recognition.training.loop import Run

FIELD = "teacher"


# ---------------------------------------------------------------- the loss


def pair_similarities(
    embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) cosine similarities over pairs ``i < j``, in a fixed pair order."""
    x = F.normalize(embeddings.float(), dim=1)
    sims = x @ x.t()
    n = sims.shape[0]
    upper = torch.ones(n, n, dtype=torch.bool, device=sims.device).triu(1)
    same = labels.view(-1, 1) == labels.view(1, -1)
    return sims[upper & same], sims[upper & ~same]


def anchor_thresholds(negatives: torch.Tensor, fprs: torch.Tensor) -> torch.Tensor:
    """``tau_a``: the negative similarity ranked ``floor(|N| * fpr)`` from the top."""
    ranked = negatives.detach().sort(descending=True).values
    index = (fprs * ranked.numel()).floor().long().clamp(0, ranked.numel() - 1)
    return ranked[index]


def soft_rank(x: torch.Tensor, thresholds: torch.Tensor, temperature: float) -> torch.Tensor:
    """``R(x) = Σ_a sigmoid((x - T_a) / temperature)``: how many anchors ``x`` passes."""
    return torch.sigmoid((x.view(-1, 1) - thresholds.view(1, -1)) / temperature).sum(1)


def ekd_loss(
    student: tuple[torch.Tensor, torch.Tensor],
    teacher: tuple[torch.Tensor, torch.Tensor],
    student_thresholds: torch.Tensor,
    teacher_thresholds: torch.Tensor,
    cfg: EKDConfig,
) -> torch.Tensor:
    """The EKD term from (pos, neg) similarities of student and teacher (same pair order)."""
    (s_pos, s_neg), (t_pos, t_neg) = student, teacher
    zero = s_neg.sum() * 0.0
    pos = zero
    if s_pos.numel():
        pos = F.mse_loss(
            soft_rank(s_pos, student_thresholds, cfg.temperature),
            soft_rank(t_pos, teacher_thresholds, cfg.temperature),
        )
    neg = zero
    if s_neg.numel():
        top = s_neg.detach().topk(min(cfg.top_negatives, s_neg.numel())).indices
        neg = F.mse_loss(
            soft_rank(s_neg[top], student_thresholds, cfg.temperature),
            soft_rank(t_neg[top], teacher_thresholds, cfg.temperature),
        )
    return cfg.pos_weight * pos + cfg.neg_weight * neg


# ---------------------------------------------------------------- the teacher's cache


def teacher_identity(path: str | Path) -> str:
    """What a cache was computed with: the weights' hash (checkpoint dir or .onnx file)."""
    p = Path(path)
    if p.suffix == ".onnx":
        if not p.is_file():
            raise InputError(f"ekd.teacher: {p}: no such ONNX file")
        return file_sha256(p)[0]
    from synthface.recognition.checkpoint import read_recognizer_config

    meta = read_recognizer_config(p)
    return meta["weights"].get("sha256") or file_sha256(p / meta["weights"]["file"])[0]


def source_path(cache: Path) -> Path:
    return cache.with_suffix(".source.json")


def build_teacher_cache(
    cfg: EKDConfig, cache: Path, dataset: Path, split: str, device: str
) -> dict[str, Any]:
    """Embed every training sample with the teacher (keyed by sample key), then record
    which teacher and which dataset it came from in ``E.source.json`` (written last)."""
    from synthface.pipeline.shards import split_manifest
    from synthface.recognition.embed_files import embed_to_npy

    summary = embed_to_npy(
        cfg.teacher,
        cache,
        shards=dataset,
        split=split,
        flip=cfg.flip,
        device=device,
        batch_size=cfg.batch_size,
        resize=True,
    )
    source = {
        "teacher": str(cfg.teacher),
        "teacher_sha256": teacher_identity(cfg.teacher),
        "dataset": str(dataset),
        "split": split,
        "dataset_config_hash": split_manifest(dataset, split).get("config_hash"),
        "flip": cfg.flip,
        "count": summary["count"],
        "dim": summary["dim"],
    }
    atomic_write_json(source_path(cache), source)
    return source


def check_teacher_cache(cfg: EKDConfig, cache: Path, dataset: Path, split: str) -> bool:
    """Refuse a cache made by another teacher or for another dataset.

    A cache written by ``synthface recognition embed`` has no ``E.source.json``; only its
    row count can be checked then (missing keys still fail at lookup). Returns whether
    the teacher could be verified.
    """
    from synthface.pipeline.shards import split_manifest

    entry = split_manifest(dataset, split)
    count = int(entry.get("num_samples", -1))
    try:
        source = json.loads(source_path(cache).read_text())
    except FileNotFoundError:
        source = None
    except (OSError, ValueError) as exc:
        raise InputError(f"ekd.cache: {source_path(cache)}: unreadable ({exc})") from None
    if source is None:
        rows = len(KeyedArray(cache, field="ekd.cache"))
        if rows != count:
            raise InputError(
                f"ekd.cache: {cache} has {rows} rows, {dataset} split {split!r} {count} samples"
            )
        return False
    expected = {
        "teacher_sha256": teacher_identity(cfg.teacher),
        "dataset_config_hash": entry.get("config_hash"),
        "count": count,
        "flip": cfg.flip,
    }
    stale = [k for k, v in expected.items() if source.get(k) != v]
    if stale:
        raise InputError(
            f"ekd.cache: {cache} was computed with another {', '.join(stale)} "
            f"(teacher {source.get('teacher')}, dataset {source.get('dataset')}); "
            "delete it or point ekd.cache elsewhere"
        )
    return True


# ---------------------------------------------------------------- the objective


@register_objective("ekd")
class EKDObjective(Objective):
    """``ekd:`` — EKD against a frozen teacher (cached embeddings or online)."""

    terms = ("ekd",)

    def __init__(self, cfg: EKDConfig, output_dir: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.cache = Path(cfg.cache) if cfg.cache else Path(output_dir) / "teacher/embeddings.npy"
        fprs = torch.tensor(cfg.fpr_anchors, dtype=torch.float64)
        self.register_buffer("fprs", fprs, persistent=False)
        self.register_buffer("student_thresholds", torch.zeros(len(fprs)))
        self.register_buffer("teacher_thresholds", torch.zeros(len(fprs)))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self._field: KeyedArray | None = None
        self._teacher: list[torch.nn.Module] = []  # a list: not a submodule (not trained/saved)

    @classmethod
    def from_config(cls, cfg: TrainConfig, num_classes: int) -> EKDObjective:
        return cls(cfg.ekd, cfg.train.output_dir)

    def prepare(self, run: Run) -> None:
        acc, cfg = run.accelerator, self.cfg
        if cfg.online:
            if Path(cfg.teacher).suffix == ".onnx":
                raise ConfigError(
                    "ekd.online: an ONNX teacher has no torch graph; use the cache "
                    "(online: false), which embeds the training set once"
                )
            from synthface.recognition.checkpoint import load_recognizer

            teacher = load_recognizer(cfg.teacher, device=acc.device).requires_grad_(False)
            if tuple(teacher.input_size) != (run.cfg.model.input_size,) * 2:
                raise ConfigError(
                    f"ekd.online: teacher {cfg.teacher} takes {teacher.input_size} inputs, "
                    f"the student {run.cfg.model.input_size}; use the cache instead"
                )
            self._teacher = [teacher]
            return
        dataset, split = run.info.path, run.cfg.data.split
        if acc.is_main_process and not self.cache.is_file():
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            run.say(f"embedding the training set with teacher {cfg.teacher} -> {self.cache}")
            build_teacher_cache(cfg, self.cache, dataset, split, acc.device.type)
        acc.wait_for_everyone()
        if not check_teacher_cache(cfg, self.cache, dataset, split):
            run.say(f"ekd.cache: {self.cache} has no source record; teacher not verified")
        self._field = KeyedArray(self.cache, field="ekd.cache")

    def sample_fields(self):
        return {} if self.cfg.online else {FIELD: self._field}

    def teacher_embeddings(self, step: Step) -> torch.Tensor:
        if self._teacher:
            with torch.no_grad():
                return self._teacher[0].eval()(step.x).float()
        return step.fields[FIELD]

    @torch.no_grad()
    def _update(self, thresholds: torch.Tensor, negatives: torch.Tensor) -> None:
        tau = anchor_thresholds(negatives, self.fprs.to(negatives.device)).to(thresholds)
        m = self.cfg.momentum
        thresholds.copy_(torch.where(self.initialised, m * tau + (1 - m) * thresholds, tau))

    def loss_terms(self, step: Step) -> dict[str, torch.Tensor]:
        student = pair_similarities(step.embeddings, step.labels)
        teacher = pair_similarities(self.teacher_embeddings(step), step.labels)
        if student[1].numel() and self.training:
            self._update(self.student_thresholds, student[1])
            self._update(self.teacher_thresholds, teacher[1])
            self.initialised.fill_(True)
        loss = ekd_loss(
            student, teacher, self.student_thresholds, self.teacher_thresholds, self.cfg
        )
        return {"ekd": loss}
