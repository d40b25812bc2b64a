"""The ``morphface`` section of a generator config (ignored by the other generators).

Kept in its own module so that the MorphFace settings live with MorphFace; the core
:class:`~synthface.generators.config.GeneratorConfig` only names the section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from synthface.pipeline.config import StrictModel
from synthface.pipeline.paths import InputPath


class ParameterGroup(StrictModel):
    """One block of an external 3DMM fit: ``key`` is its array name in the fit file."""

    name: str
    key: str
    size: int = Field(ge=1)


def deca_layout() -> list[ParameterGroup]:
    """DECA/FLAME's code vector (236 values): the layout MorphFace's paper uses."""
    return [
        ParameterGroup(name="shape", key="shape", size=100),
        ParameterGroup(name="expression", key="exp", size=50),
        ParameterGroup(name="pose", key="pose", size=6),
        ParameterGroup(name="camera", key="cam", size=3),
        ParameterGroup(name="texture", key="tex", size=50),
        ParameterGroup(name="lighting", key="light", size=27),  # 9 SH coefficients x RGB
    ]


class ExternalStyleConfig(StrictModel):
    """Per-image fits of the user's own 3DMM fitter (nothing license-restricted ships here).

    ``fits``: directory with one ``<sample key>.npz`` per training image holding the arrays
    named in ``layout``; ``maps``: directory with one ``<sample key>.npz`` holding
    ``normal``, ``albedo`` and ``shading`` (H, W, 3) rendered by the fitter;
    ``renderer``: ``"module:function"`` that renders parameter rows into such maps, needed
    to sample new styles (the style prior draws parameters, something must draw them).
    """

    fits: InputPath | None = None
    maps: InputPath | None = None
    renderer: str | None = None
    layout: list[ParameterGroup] = Field(default_factory=deca_layout, min_length=1)

    @model_validator(mode="after")
    def _names(self) -> ExternalStyleConfig:
        names = [g.name for g in self.layout]
        if len(set(names)) != len(names):
            raise ValueError(f"layout has repeated group names: {names}")
        return self


class MorphFaceConfig(StrictModel):
    # Where style parameters and their rendered maps come from (generators/morphface/styles.py).
    style_source: Literal["world", "external"] = "world"
    # Side of the normal/albedo/shading maps the style encoder reads.
    map_size: int = Field(default=32, ge=8)
    # Style tokens = style_grid x style_grid cells of the encoder's last feature map.
    style_grid: int = Field(default=4, ge=1)
    # Widths of the style encoder's stride-2 convolutions.
    style_channels: list[int] = Field(default=[32, 64], min_length=1)
    # Context blending (docs/generators.md, "MorphFace"): "timestep" weights the identity
    # and style cross-attention outputs by t; "constant" keeps them separate with equal
    # weights; "none" is the ablation: one joint cross-attention over all tokens.
    blending: Literal["timestep", "constant", "none"] = "timestep"
    # beta of the timestep rule: w_id = 1 - beta t/T, w_style = 1 - beta (1 - t/T).
    blend_strength: float = Field(default=0.5, ge=0, le=1)
    # Per-image identity condition at cosine U[lb, ub] to the identity's anchor; (1, 1) =
    # the anchor itself (MorphFace varies images through styles, not the embedding).
    identity_cos: tuple[float, float] = (1.0, 1.0)
    # Sampling: each virtual subject draws its own style mean (False = the ablation:
    # every image's style drawn independently from the pooled distribution).
    subject_aware: bool = True
    # New identities (``synthface generator identities``): largest cosine allowed between
    # two new identities, and between a new identity and any training identity.
    new_identity_max_cos: float = Field(default=0.6, ge=-1, le=1)
    new_identity_max_cos_training: float = Field(default=0.75, ge=-1, le=1)
    external: ExternalStyleConfig = Field(default_factory=ExternalStyleConfig)

    @model_validator(mode="after")
    def _check(self) -> MorphFaceConfig:
        lb, ub = self.identity_cos
        if not -1.0 <= lb <= ub <= 1.0:
            raise ValueError(f"identity_cos must satisfy -1 <= lb <= ub <= 1 (got {lb}, {ub})")
        if self.map_size // 2 ** len(self.style_channels) < 1:
            raise ValueError(
                f"map_size {self.map_size} is too small for {len(self.style_channels)} "
                "stride-2 style encoder layers"
            )
        return self
