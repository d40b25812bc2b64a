"""The ``recognition`` config kind: everything ``synthface recognition train`` reads.

One YAML file per run, validated by :class:`TrainConfig` (unknown keys are errors).
Durations are in *epochs* of the training set, as in arcface_torch, because that is how
recipes are published; the loop converts them to optimizer steps once, from the dataset
manifest's sample count and the global batch. ``train.max_steps`` overrides the length
for smoke runs and benchmarks; the schedule then spans ``max_steps``.

Backbone and head constructor arguments live in free-form ``params`` mappings because
each registered model takes different ones; they are checked against the constructor's
signature when the run is built, so a typo still fails before any work starts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from synthface.pipeline.config import StrictModel
from synthface.pipeline.paths import InputPath, OutputPath

Probability = float


class SamplerConfig(StrictModel):
    """How samples are drawn into a batch.

    ``stream`` reads a shuffled, resampled shard stream (fast, sequential reads; a batch
    holds whatever identities sit in the shuffle buffer). ``balanced`` reads by random
    access and builds each batch from ``P`` identities x ``per_identity`` samples plus
    ``random_fraction`` of the batch drawn uniformly (EKD's BalancedBatchSampler: 8 x 4 +
    32 random per GPU), so every batch holds same-identity pairs: what pair losses (DDL,
    EKD) need. ``random`` reads by random access too, every batch a slice of a full
    shuffle of the whole set per epoch (arcface_torch's ``DistributedSampler``): batches
    mix identities from everywhere, ranks read disjoint parts, each sample once an epoch.
    """

    kind: Literal["stream", "balanced", "random"] = "stream"
    per_identity: int = Field(default=4, ge=2, description="K: samples per drawn identity")
    random_fraction: float = Field(
        default=0.0, ge=0, lt=1, description="share of each batch drawn uniformly at random"
    )


class DataConfig(StrictModel):
    """Where the training shards are and how they are batched."""

    train: InputPath = Field(description="dataset directory written by pipeline.shards")
    split: str = "train"
    num_classes: int | None = Field(
        default=None,
        gt=1,
        description="expected identity count; must equal the dataset manifest's when given",
    )
    batch_size: int = Field(default=128, gt=0, description="images per process per micro-batch")
    num_workers: int = Field(default=4, ge=0)
    shuffle_buffer: int = Field(
        default=5000,
        ge=0,
        description="encoded samples buffered per loader worker for shuffling; shards hold "
        "whole identities, so this sets how many identities a batch can mix",
    )
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    view: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_\-]*$",
        description="train through views/NAME.json of the dataset (e.g. qc, written by "
        "generation): only its identities, relabelled 0..K-1 (the head has K classes), "
        "and never a sample it leaves out",
    )


class ProtectionConfig(StrictModel):
    """A privacy protection around the backbone (``synthface.recognition.privacy``)."""

    name: str = Field(description="registered protection, e.g. duetface, partialface, dctdp")
    params: dict[str, Any] = Field(
        default_factory=dict, description="protection arguments, checked when the run is built"
    )


class ModelConfig(StrictModel):
    backbone: str = "ir50"
    input_size: int = Field(default=112, ge=16)
    embedding_dim: int = Field(default=512, gt=0)
    params: dict[str, Any] = Field(default_factory=dict, description="extra backbone arguments")
    channels_last: bool = False
    compile: bool = Field(default=False, description="torch.compile through accelerate (inductor)")
    protection: ProtectionConfig | None = Field(
        default=None,
        description="train a protected recognizer: the backbone becomes the protection's "
        "server network, its input what the protection lets through",
    )


class HeadConfig(StrictModel):
    name: str = "arcface"
    params: dict[str, Any] = Field(
        default_factory=dict, description="head arguments, e.g. scale and margins"
    )
    shard_classes: bool = Field(
        default=False,
        description="Partial FC across processes (arcface_torch): each process holds 1/N "
        "of the class centres and scores the all-gathered batch; arcface, cosface and "
        "combined only; resume needs the same number of processes",
    )


class OptimConfig(StrictModel):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    decay_norm_and_bias: bool = Field(
        default=True,
        description="weight decay on normalisation/PReLU weights and biases too, as "
        "arcface_torch (one SGD group, weight decay on every parameter); false exempts "
        "0-/1-d tensors",
    )


class ScheduleConfig(StrictModel):
    """Learning-rate factor over training: linear warm-up, then a decay rule."""

    kind: Literal["polynomial", "step", "cosine", "constant"] = "polynomial"
    warmup_epochs: float = Field(default=0.0, ge=0)
    power: float = Field(default=1.0, gt=0, description="polynomial decay exponent")
    milestones: list[float] = Field(
        default_factory=list, description="epochs at which the step schedule multiplies by gamma"
    )
    gamma: float = Field(default=0.1, gt=0, le=1)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _milestones_sorted(self) -> ScheduleConfig:
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError(f"milestones must be strictly increasing (got {self.milestones})")
        if self.kind == "step" and not self.milestones:
            raise ValueError("kind 'step' needs milestones")
        return self


class RunConfig(StrictModel):
    """How long, on what, with which numerics."""

    output_dir: OutputPath = "out/recognition/run"
    epochs: float = Field(default=20.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0, description="overrides epochs when set")
    seed: int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    grad_accum: int = Field(default=1, gt=0, description="micro-batches per optimizer step")
    clip_grad_norm: float | None = Field(default=5.0, gt=0)


class FlipAug(StrictModel):
    p: Probability = Field(default=0.5, ge=0, le=1)


class RandomScaleAug(StrictModel):
    """FAN-style random scale: down-sample by a random factor, up-sample back."""

    p: Probability = Field(default=0.0, ge=0, le=1)
    min_scale: float = Field(default=0.5, gt=0, le=1)
    levels: int = Field(default=8, gt=0, description="scale buckets, one interpolate call each")


class CropAug(StrictModel):
    """AdaFace-style crop: keep a random box in place, black out the rest."""

    p: Probability = Field(default=0.0, ge=0, le=1)
    min_area: float = Field(default=0.2, gt=0, le=1)
    min_ratio: float = Field(default=0.75, gt=0)
    max_ratio: float = Field(default=4 / 3, gt=0)

    @model_validator(mode="after")
    def _ratio_order(self) -> CropAug:
        if self.max_ratio < self.min_ratio:
            raise ValueError(f"max_ratio {self.max_ratio} < min_ratio {self.min_ratio}")
        return self


class LowResAug(StrictModel):
    """AdaFace-style low resolution: random side ratio and interpolation, then back up."""

    p: Probability = Field(default=0.0, ge=0, le=1)
    min_side: float = Field(default=0.2, gt=0, le=1)
    levels: int = Field(default=8, gt=0)


class PhotometricAug(StrictModel):
    """AdaFace-style colour jitter: brightness, contrast, saturation factors in 1 ± x."""

    p: Probability = Field(default=0.0, ge=0, le=1)
    brightness: float = Field(default=0.5, ge=0, lt=1)
    contrast: float = Field(default=0.5, ge=0, lt=1)
    saturation: float = Field(default=0.5, ge=0, lt=1)


class AugmentConfig(StrictModel):
    flip: FlipAug = Field(default_factory=FlipAug)
    random_scale: RandomScaleAug = Field(default_factory=RandomScaleAug)
    crop: CropAug = Field(default_factory=CropAug)
    low_res: LowResAug = Field(default_factory=LowResAug)
    photometric: PhotometricAug = Field(default_factory=PhotometricAug)


class ValidationConfig(StrictModel):
    every_steps: int = Field(default=0, ge=0, description="0 = only at the end (if sets given)")
    sets: list[InputPath] = Field(
        default_factory=list, description="verification .bin files (insightface layout)"
    )
    batch_size: int = Field(default=256, gt=0)
    flip: bool = Field(default=True, description="sum embeddings of image and mirror image")
    folds: int = Field(default=10, ge=2)
    cache_dir: OutputPath | None = Field(
        default=None,
        description="decoded sets (memory-mapped .npy keyed by the .bin's sha256 and size); "
        "default <train.output_dir>/validation_cache",
    )


class CheckpointConfig(StrictModel):
    every_steps: int = Field(default=2000, ge=0, description="0 = only at the end")
    keep: int = Field(default=3, gt=0, description="most recent checkpoints kept on disk")


class LoggingConfig(StrictModel):
    every_steps: int = Field(default=50, gt=0)
    csv: bool = True
    tensorboard: bool = False
    progress: bool = True


# ---------------------------------------------------------------- training options
# Each section below switches on one objective of ``recognition/training/objectives.py``
# (absent = off; docs/training.md, "Training options"). The weights default to the
# values of the papers' reference code (reference/privacy_and_training.md, Part B).


class HardRule(StrictModel):
    """Which samples are *hard* (DDL's student branch); the others are easy (its teacher).

    ``yaw``: ``|meta.attributes.yaw| >= threshold`` degrees (default 30; the procedural
    world and any generator that records head pose). ``blur``: ``meta.attributes.blur >=
    threshold`` (Gaussian sigma in pixels at 112 px, default 0.8; the world's capture
    degradation, a low-resolution stand-in). ``quality``: face image quality below
    ``threshold``, read from ``file`` (a keyed ``Q.npy`` + ``Q.keys.txt``, e.g. from
    ``synthface quality score``) or else from ``meta.qc.quality`` (generated data scored
    by QC). ``list``: the sample keys listed in ``file``, one per line.
    """

    kind: Literal["yaw", "blur", "quality", "list"]
    threshold: float | None = None
    file: InputPath | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_threshold(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("threshold") is None:
            default = {"yaw": 30.0, "blur": 0.8}.get(data.get("kind"))
            if default is not None:
                data = {**data, "threshold": default}
        return data

    @model_validator(mode="after")
    def _complete(self) -> HardRule:
        if self.kind == "list" and not self.file:
            raise ValueError("kind 'list' needs file (sample keys, one per line)")
        if self.kind == "quality" and self.threshold is None:
            raise ValueError("kind 'quality' needs threshold (hard = quality below it)")
        if self.kind in ("yaw", "blur") and self.file:
            raise ValueError(f"kind {self.kind!r} reads sample metadata; file is not used")
        return self


class DDLConfig(StrictModel):
    """Distribution Distillation Loss (Huang et al., ECCV 2020), added to the head's loss.

    L = pos_kl_weight * KL(P+_easy || P+_hard) + neg_kl_weight * KL(P-_easy || P-_hard)
    + order_weight * sum_{a,b} (E[s-_a] - E[s+_b]), with soft histograms P over ``bins``
    points in [0, 1) and a Gaussian kernel of width ``sigma``.
    """

    hard: HardRule
    pos_kl_weight: float = Field(default=0.1, ge=0)
    neg_kl_weight: float = Field(default=0.02, ge=0)
    order_weight: float = Field(default=0.5, ge=0)
    sigma: float = Field(default=0.1, gt=0)
    bins: int = Field(default=1000, ge=10)
    positive_threshold: float = Field(
        default=0.0, ge=-1, lt=1, description="positive pairs at or below this cosine are ignored"
    )


class EKDConfig(StrictModel):
    """Evaluation-oriented knowledge distillation (EKD, Huang et al., CVPR 2022).

    The student's rank of each pair similarity against thresholds at the FPR anchors is
    matched to the frozen teacher's: 0.02 * MSE on positive pairs + 0.01 * MSE on the
    ``top_negatives`` hardest negative pairs (the student's), added to the head's loss.
    """

    teacher: InputPath = Field(description="recognizer checkpoint directory or .onnx")
    cache: OutputPath | None = Field(
        default=None,
        description="the teacher's embeddings of the training set (E.npy + E.keys.txt, "
        "the layout of `synthface recognition embed --shards`); computed once when absent; "
        "default OUTPUT/teacher/embeddings.npy",
    )
    online: bool = Field(
        default=False,
        description="run a torch teacher on every (augmented) batch instead of the cache",
    )
    flip: bool = Field(default=True, description="cache flip-summed teacher embeddings")
    batch_size: int = Field(default=256, gt=0, description="images per teacher batch (cache)")
    fpr_anchors: list[float] = Field(
        default_factory=lambda: [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6],
        min_length=1,
        description="false-positive rates whose thresholds define the rank",
    )
    momentum: float = Field(default=0.01, gt=0, le=1, description="EMA rate of the thresholds")
    temperature: float = Field(default=0.01, gt=0)
    pos_weight: float = Field(default=0.02, ge=0)
    neg_weight: float = Field(default=0.01, ge=0)
    top_negatives: int = Field(default=2000, gt=0)

    @model_validator(mode="after")
    def _anchors(self) -> EKDConfig:
        if not all(0 < a < 1 for a in self.fpr_anchors):
            raise ValueError(f"fpr_anchors must lie in (0, 1), got {self.fpr_anchors}")
        return self


class AdversarialConfig(StrictModel):
    """Adversarial training with PGD examples of random strength on the recognizer itself.

    ``afa``: Adaptive Feature Alignment: every BatchNorm becomes a clean/adversarial pair
    whose outputs are mixed by a fusing weight that the layer estimates from its input
    (fitted to ``epsilon / epsilon_max``), so one model serves every attack strength.
    ``pgd``: plain adversarial training on the same examples (one BatchNorm per layer).
    """

    method: Literal["afa", "pgd"] = "afa"
    epsilon_max: float = Field(default=8.0, gt=0, le=64, description="L-inf budget, pixel units")
    steps: int = Field(default=3, ge=1, description="PGD steps per training example")
    step_size: float | None = Field(
        default=None, gt=0, description="pixel units; default 2.5 * epsilon / steps"
    )
    random_strength: bool = Field(
        default=True, description="epsilon ~ U(0, epsilon_max) per sample (else epsilon_max)"
    )
    fuse_momentum: float = Field(
        default=0.05, gt=0, le=1, description="afa: moving-average rate of the fusing estimators"
    )


class DistillConfig(StrictModel):
    """A frozen teacher recognizer whose embeddings the student is pulled towards
    (``recognition/training/distill.py``; EKD, the evaluation-oriented variant, is ``ekd:``).

    The loss adds ``weight * mean(1 - cos(student(x), teacher(x)))`` to the margin loss,
    on the same (augmented) batch; the teacher sees it resized to its own input size.
    """

    teacher: InputPath = Field(
        description="recognizer checkpoint directory or insightface-style .onnx file "
        "(converted to torch operations); its embedding size must equal model.embedding_dim",
    )
    weight: float = Field(default=1.0, gt=0, description="factor of the distillation term")


class TrainConfig(StrictModel):
    """A recognizer training run (``configs/recognition/*.yaml``)."""

    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: RunConfig = Field(default_factory=RunConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    # training options (objectives); absent = off
    ddl: DDLConfig | None = None
    distill: DistillConfig | None = None
    ekd: EKDConfig | None = None
    adversarial: AdversarialConfig | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainConfig:
        if self.train.mixed_precision == "fp16" and self.train.device == "cpu":
            raise ValueError("train.mixed_precision 'fp16' needs a CUDA device; use 'bf16' on CPU")
        for name in ("ddl", "ekd"):
            if getattr(self, name) is not None and self.data.sampler.kind != "balanced":
                raise ValueError(
                    f"{name} compares same-identity pairs in every batch: "
                    "set data.sampler.kind: balanced"
                )
        return self
