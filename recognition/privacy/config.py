"""The ``privacy`` config kind: one benchmark of protection methods (``configs/privacy/*.yaml``).

Every method trains with the same recipe (a ``recognition`` config, the unprotected
baseline's) on the same shards, is verified on the same world protocols and attacked the
same way. A method row only says which protection and its arguments, plus optional
``--set``-style overrides of the recipe for that row.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from synthface.pipeline.config import StrictModel
from synthface.pipeline.paths import InputPath, OutputPath


class MethodSpec(StrictModel):
    """One row of the table."""

    name: str = Field(description="row label, also the run's folder name")
    protection: str | None = Field(
        default=None, description="registered protection; null = the unprotected baseline"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="protection arguments")
    pretrain_params: dict[str, Any] = Field(
        default_factory=dict,
        description="extra arguments of the first stage (duetface_client, minusface_residue)",
    )
    overrides: list[str] = Field(
        default_factory=list, description="KEY=VALUE overrides of the recipe for this row"
    )
    pretrain_overrides: list[str] = Field(
        default_factory=list,
        description="KEY=VALUE overrides of the first stage's recipe only, after overrides "
        "(so a second stage can train longer without retraining the first)",
    )

    @model_validator(mode="after")
    def _name_is_a_folder(self) -> MethodSpec:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits, '-', '_' or '.'")
        return self


class InversionConfig(StrictModel):
    """The attacker's inversion networks (Adam, L1 on images / cosine on embeddings)."""

    steps: int = Field(default=600, gt=0)
    batch_size: int = Field(default=32, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=1)


class JudgeConfig(StrictModel):
    """The independent recognizer that identifies reconstructions."""

    model: InputPath | None = Field(
        default=None,
        description="an existing recognizer directory; null = train one with the recipe on "
        "the attacker's data (seed + 1)",
    )
    overrides: list[str] = Field(default_factory=list, description="recipe overrides for it")


class AttackConfig(StrictModel):
    data: InputPath = Field(description="the attacker's own images: a shard dataset (other people)")
    images: int = Field(default=2000, gt=1, description="attacker images used")
    targets: InputPath = Field(description="verification .bin whose genuine pairs are the targets")
    target_pairs: int = Field(default=300, ge=10, description="targets (chance = 1 / this)")
    inversion: InversionConfig = Field(default_factory=InversionConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    seed: int = Field(default=0, ge=0)


class PrivacyBenchmarkConfig(StrictModel):
    """``privacy-benchmark``: accuracy vs attack success of protection methods."""

    name: str = "privacy"
    output_dir: OutputPath = "out/privacy/run"
    recipe: InputPath = Field(
        description="a configs/recognition/*.yaml: the shared training recipe"
    )
    recipe_overrides: list[str] = Field(default_factory=list)
    train_data: InputPath = Field(description="training shards (real world or generated)")
    train_view: str | None = Field(
        default="qc",
        pattern=r"^[a-z0-9][a-z0-9_\-]*$",
        description="train through views/NAME.json of train_data when it has one (a generated "
        "set: its QC view; required there), else read the data whole; null: always whole",
    )
    protocols: list[InputPath] = Field(min_length=1, description="verification .bin files")
    eval_batch_size: int = Field(default=256, gt=0)
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="where verification and attacks run"
    )
    roi_from_data: bool = Field(
        default=True,
        description="DuetFace's region of interest from the training shards' landmarks when "
        "they carry them (else the arcface alignment template)",
    )
    methods: list[MethodSpec] = Field(min_length=1)
    attack: AttackConfig

    @model_validator(mode="after")
    def _one_baseline(self) -> PrivacyBenchmarkConfig:
        names = [m.name for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"methods: names must be unique (repeated: {', '.join(dup)})")
        base = [m.name for m in self.methods if m.protection is None]
        if len(base) != 1:
            raise ValueError(
                f"methods: exactly one row without protection (the baseline) is needed, "
                f"found {len(base)}"
            )
        return self

    @property
    def baseline(self) -> MethodSpec:
        return next(m for m in self.methods if m.protection is None)
