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

Probability = float


class DataConfig(StrictModel):
    """Where the training shards are and how they are batched."""

    train: str = Field(description="dataset directory written by pipeline.shards")
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


class OptimConfig(StrictModel):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    decay_norm_and_bias: bool = Field(
        default=False,
        description="apply weight decay to normalisation weights and biases too (arcface: no)",
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

    output_dir: str = "out/recognition/run"
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
    sets: list[str] = Field(
        default_factory=list, description="verification .bin files (insightface layout)"
    )
    batch_size: int = Field(default=256, gt=0)
    flip: bool = Field(default=True, description="sum embeddings of image and mirror image")
    folds: int = Field(default=10, ge=2)


class CheckpointConfig(StrictModel):
    every_steps: int = Field(default=2000, ge=0, description="0 = only at the end")
    keep: int = Field(default=3, gt=0, description="most recent checkpoints kept on disk")


class LoggingConfig(StrictModel):
    every_steps: int = Field(default=50, gt=0)
    csv: bool = True
    tensorboard: bool = False
    progress: bool = True


class DistillConfig(StrictModel):
    """A frozen teacher recognizer whose embeddings the student is pulled towards.

    The loss adds ``weight * mean(1 - cos(student(x), teacher(x)))`` to the margin loss,
    on the same (augmented) batch; the teacher sees it resized to its own input size.
    """

    teacher: str | None = Field(
        default=None,
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
    distill: DistillConfig = Field(default_factory=DistillConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainConfig:
        if self.train.mixed_precision == "fp16" and self.train.device == "cpu":
            raise ValueError("train.mixed_precision 'fp16' needs a CUDA device; use 'bf16' on CPU")
        return self
