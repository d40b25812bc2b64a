"""The ``quality`` config kind: training an SDD-FIQA quality regressor on pseudo-labels.

It reuses the recognizer's data, optimizer, schedule and run sections; the defaults
are SDD-FIQA's reference recipe (Adam-style lr 1e-4, weight decay 5e-4, 20 epochs, the
rate divided by 10 after epochs 5 and 10, Smooth-L1).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from synthface.pipeline.config import StrictModel
from synthface.pipeline.paths import InputPath
from synthface.recognition.config import (
    DataConfig,
    FlipAug,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
)


class QualityDataConfig(DataConfig):
    labels: InputPath = Field(
        description="pseudo-labels of the training set: L.npy + L.keys.txt "
        "(synthface quality pseudo-labels)"
    )


class QualityModelConfig(StrictModel):
    backbone: str = "mobilefacenet"
    input_size: int = Field(default=112, ge=16)
    params: dict[str, Any] = Field(default_factory=dict, description="extra backbone arguments")
    init: InputPath | None = Field(
        default=None,
        description="recognizer checkpoint whose weights start the backbone (same architecture)",
    )
    dropout: float = Field(default=0.5, ge=0, lt=1)


def _optim() -> OptimConfig:
    return OptimConfig(name="adamw", lr=1e-4, weight_decay=5e-4)


def _schedule() -> ScheduleConfig:
    return ScheduleConfig(kind="step", milestones=[5.0, 10.0], gamma=0.1)


class QualityTrainConfig(StrictModel):
    """A quality-regressor training run (``configs/quality/*.yaml``)."""

    data: QualityDataConfig
    model: QualityModelConfig = Field(default_factory=QualityModelConfig)
    optim: OptimConfig = Field(default_factory=_optim)
    schedule: ScheduleConfig = Field(default_factory=_schedule)
    train: RunConfig = Field(default_factory=lambda: RunConfig(output_dir="out/quality/run"))
    flip: FlipAug = Field(default_factory=FlipAug)
    loss: Literal["smooth_l1", "l1", "l2"] = "smooth_l1"
