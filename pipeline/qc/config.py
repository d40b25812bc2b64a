"""Thresholds of the quality and privacy control, as one typed config section.

All similarities are cosines between L2-normalised embeddings of the *evaluation*
recognizer, so a threshold means the same thing for every generator. Scores are
always recorded; thresholds only decide which flags are set and what the filtered
view leaves out — changing them never requires regenerating a dataset.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from synthface.pipeline.config import StrictModel
from synthface.pipeline.paths import InputPath

SampleFlag = Literal["low_consistency", "duplicate", "low_quality"]
IdentityFlag = Literal["low_consistency", "not_separated", "leak", "too_few_samples"]


class QCConfig(StrictModel):
    """Config section ``qc`` of a generation run (or of ``synthface qc``)."""

    # Evaluation recognizer (checkpoint dir or insightface .onnx). None = the generator's
    # own conditioning encoder, which is then the only choice that can also score how
    # close each image is to its anchor (``anchor_cos``).
    recognizer: InputPath | None = None
    batch_size: int = Field(default=64, ge=1)
    # Per sample: cosine to its identity's centroid below this -> flag "low_consistency".
    min_sample_consistency: float = Field(default=0.3, ge=-1, le=1)
    # Per identity: mean sample-to-centroid cosine below this -> flag "low_consistency".
    min_identity_consistency: float = Field(default=0.4, ge=-1, le=1)
    # Per identity: centroid cosine to the nearest other identity above this -> "not_separated".
    max_neighbour_similarity: float = Field(default=0.8, ge=-1, le=1)
    # Two samples of one identity above this cosine: the later one is a "duplicate".
    duplicate_similarity: float = Field(default=0.98, ge=-1, le=1)
    # Real-identity gallery: a (G, D) float .npy of embeddings under the SAME recognizer.
    gallery: InputPath | None = None
    # Identity centroid within this cosine of any gallery row -> flag "leak".
    max_gallery_similarity: float = Field(default=0.6, ge=-1, le=1)
    # Face image quality model (a `synthface quality train` directory, SDD-FIQA); every
    # sample's score goes into its metadata (qc.quality). None = not scored.
    quality_model: InputPath | None = None
    # Per sample: quality below this -> flag "low_quality" (the model's 0-100 scale).
    min_quality: float | None = None
    # "drop": leaked identities are left out of the filtered view; "flag": only marked.
    leakage_action: Literal["flag", "drop"] = "drop"
    # Which flags remove an identity / a sample from the filtered view.
    drop_identities: list[IdentityFlag] = Field(default_factory=lambda: ["too_few_samples"])
    drop_samples: list[SampleFlag] = Field(default_factory=lambda: ["duplicate", "low_quality"])
    # An identity keeping fewer samples than this after sample filtering is "too_few_samples".
    min_samples: int = Field(default=2, ge=1)
    # Name of the filtered view written at finalize: views/<view>.json.
    view: str = Field(default="qc", pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    # Rows of centroids compared per block (memory ~ block x identities floats).
    block: int = Field(default=4096, ge=1)

    @model_validator(mode="after")
    def _quality_needs_model(self) -> QCConfig:
        if self.min_quality is not None and self.quality_model is None:
            raise ValueError("min_quality needs quality_model (the scores come from it)")
        return self

    def identity_drop_set(self) -> set[str]:
        """Identity flags that exclude an identity from the view (``leak`` when dropping leaks)."""
        return set(self.drop_identities) | ({"leak"} if self.leakage_action == "drop" else set())
