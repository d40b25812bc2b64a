"""Config kind ``benchmark`` (``configs/benchmark/*.yaml``): the paper protocol as one run.

Every generator gets the same identity budget, sampler seed, QC recognizer and
recognizer recipe; the real-data baseline gets the same recipe on as many real images.
Paths follow the project's rule (``synthface.pipeline.paths``): inputs relative to the
config file's folder, outputs under ``$SYNTHFACE_HOME`` or the working directory; a
loaded config holds them absolute, so a served deployment does not depend on where its
runs start. Stage keys hash the *content* behind every path (config files, checkpoint
and recognizer hashes, dataset manifests), never the paths themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from synthface.pipeline.config import StrictModel, load_config
from synthface.pipeline.paths import InputPath, OutputPath
from synthface.pipeline.qc.config import QCConfig


class WorldSet(StrictModel):
    """Identities x images drawn from the procedural world's train stream with ``seed``."""

    identities: int = Field(default=400, ge=3)
    per_identity: int = Field(default=16, ge=2, le=10_000)
    seed: int = Field(default=0, ge=0)


class ProtocolsSection(StrictModel):
    """The world's verification protocols (held-out eval identities) for evaluation."""

    names: list[str] = Field(default_factory=lambda: ["all"])
    folds: int = Field(default=10, ge=2)
    pairs_per_fold: int = Field(default=200, ge=16)
    seed: int = Field(default=0, ge=0)


class RealSection(StrictModel):
    """Real data: the world's (default) or yours, through the same stages.

    ``source: world`` renders ``world`` (the generators' training identities and the
    real baseline's pool), the ``protocols`` and two held-out images of each training
    identity for FRCSyn calibration. ``source: shards`` reads ``train`` (identity
    shards), ``bins`` (insightface ``.bin`` verification sets) and ``tree`` (an FRCSyn
    comparison tree with ground truth, e.g. agedb/bupt/cfp-fp/rof), and calibrates on
    ``holdout`` (shards of held-out images of training identities; default: the last
    two images of the training identities themselves).
    """

    source: Literal["world", "shards"] = "world"
    world: WorldSet = Field(default_factory=WorldSet)
    protocols: ProtocolsSection = Field(default_factory=ProtocolsSection)
    train: InputPath | None = None
    bins: list[InputPath] = Field(default_factory=list)
    tree: InputPath | None = None
    holdout: InputPath | None = None
    calibration_identities: int = Field(default=200, ge=2)

    @model_validator(mode="after")
    def _source(self) -> RealSection:
        if self.source == "shards":
            if self.train is None:
                raise ValueError("source 'shards' needs train (the real training shards)")
            if not self.bins and self.tree is None:
                raise ValueError("source 'shards' needs bins and/or tree to evaluate on")
        return self


class BudgetSection(StrictModel):
    """The identity budget every generator gets (and the real baseline's image count)."""

    identities: int = Field(default=200, ge=2)
    per_identity: int = Field(default=16, ge=2, le=10_000)
    seed: int = Field(default=0, ge=0)


class RecognizerSource(StrictModel):
    """An existing recognizer, or one trained here with the recipe + ``overrides``."""

    recognizer: InputPath | None = None
    overrides: list[str] = Field(default_factory=list)


class JudgeSection(RecognizerSource):
    """The independent recognizer that judges (QC) every generated set.

    Trained here on *other* world identities (``world``, another seed stream) with the
    recipe and ``overrides`` (default: another training seed), so no generator was
    conditioned on it or saw its training images. With ``real.source: shards`` give
    ``recognizer``.
    """

    world: WorldSet = Field(default_factory=lambda: WorldSet(seed=1))
    overrides: list[str] = Field(default_factory=lambda: ["train.seed=1"])


class GeneratorEntry(StrictModel):
    """A registered generator, trained from ``config`` or loaded from ``checkpoint``.

    Trained here, the benchmark sets its data (the real training shards), its
    conditioning encoder, identity_dim, image size and output directory; ``overrides``
    (``key=value``, as ``synthface generator train --set``) change the rest.
    ``sampler_options`` are the generator's own sampling switches (UIFace's
    ``two_stage``, ``injection``, ...): entries that differ only in them and their
    ``label`` share one trained generator, so a sampling ablation trains once.
    """

    name: str
    label: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    config: InputPath | None = None
    checkpoint: InputPath | None = None
    overrides: list[str] = Field(default_factory=list)
    sampler_options: dict[str, bool | int | float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one(self) -> GeneratorEntry:
        if (self.config is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of config (train it) or checkpoint (load it)")
        return self

    @property
    def id(self) -> str:
        return self.label or self.name


class GenerationSection(StrictModel):
    """How every synthetic set is drawn (same for all generators)."""

    anchor_region: Literal["auto", "data", "sphere"] = "auto"
    region_variance: float = Field(default=0.95, gt=0, le=1)
    novelty_max_cos: float | None = Field(default=0.8, ge=-1, le=1)
    sampler: Literal["ddpm", "ddim", "dpmpp_2m"] | None = None
    steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0)
    id_guidance_scale: float | None = Field(default=None, ge=0)
    batch_size: int = Field(default=64, ge=1)
    max_samples_per_shard: int = Field(default=2000, ge=1)
    image_format: Literal["jpg", "png"] = "jpg"
    # QC thresholds; qc.recognizer is always the judge (a recognizer set here is refused).
    qc: QCConfig = Field(default_factory=QCConfig)
    # What "leak" means. "real": a synthetic identity leaks when the judge puts it closer
    # to a real training identity than 95 % of the real identities are to their nearest
    # other one (measured by the gallery stage; replaces qc.max_gallery_similarity), so the
    # threshold follows the judge's own scale. "fixed": qc.max_gallery_similarity as given.
    leak_threshold: Literal["real", "fixed"] = "real"

    @model_validator(mode="after")
    def _judge(self) -> GenerationSection:
        if self.qc.recognizer is not None:
            raise ValueError(
                "qc.recognizer: the benchmark always judges with its own independent judge "
                "(judge.recognizer); leave qc.recognizer unset"
            )
        return self


class RecognitionSection(StrictModel):
    """The one recipe every training set gets (a ``configs/recognition`` file + overrides).

    ``view``: the QC view each generated set is read through, alone and in real +
    synthetic, so identities QC left out (leaked, inconsistent, ...) and its dropped
    samples never reach a recognizer; null trains on every generated sample.
    """

    recipe: InputPath = "synthface:recognition/world_tiny.yaml"
    overrides: list[str] = Field(default_factory=list)
    view: str | None = Field(default="qc", pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    # Training seeds (``train.seed``): every row trains one recognizer per seed and the
    # table reports mean +- std over them, because fold spread alone (1-5 points at CPU
    # scale) is as large as the differences between generators.
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)

    @model_validator(mode="after")
    def _seeds(self) -> RecognitionSection:
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds {self.seeds}: give distinct non-negative seeds")
        return self


class EvaluationSection(StrictModel):
    frcsyn: bool = True
    edition: Literal["cvpr2024"] = "cvpr2024"
    threshold_method: Literal["min_fnmr_fmr", "target_fmr"] = "min_fnmr_fmr"
    batch_size: int = Field(default=256, ge=1)


class VariationSection(StrictModel):
    """Intra-class spread of pose and age, measured by a regressor trained on world truth."""

    enabled: bool = True
    attributes: list[Literal["yaw", "pitch", "roll", "age"]] = Field(
        default_factory=lambda: ["yaw", "pitch", "age"]
    )
    world: WorldSet = Field(
        default_factory=lambda: WorldSet(identities=400, per_identity=8, seed=2)
    )
    steps: int = Field(default=1500, ge=1)
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=2e-3, gt=0)
    # At most this many identities of each training set are measured.
    max_identities: int = Field(default=200, ge=2)


class DistanceSection(StrictModel):
    """Fréchet distance of each generated set to real images in the judge's space, and the
    gate that flags sets whose samples are not faces (``distance.py``'s criterion).

    ``images``: the size ``n`` of every set compared (default: the budget's image count);
    FD is biased upwards at small ``n``, so all sets use the same one.
    """

    enabled: bool = True
    images: int | None = Field(default=None, ge=16)
    seed: int = Field(default=0, ge=0)


class ScalingSection(StrictModel):
    """An identity-scaling series: one generator, ``identities`` counts at the budget's
    images per identity, each trained with every seed (empty list: no series).

    ``generator``: the entry's id; null takes the table's best synthetic-only row by mean
    accuracy among the sets that pass the face gate (all sets if none passes).
    """

    identities: list[int] = Field(default_factory=list)
    generator: str | None = None

    @model_validator(mode="after")
    def _counts(self) -> ScalingSection:
        if any(n < 2 for n in self.identities) or len(set(self.identities)) != len(self.identities):
            raise ValueError(f"identities {self.identities}: distinct counts >= 2")
        return self


class RunnerSection(StrictModel):
    retries: int = Field(default=0, ge=0)


class BenchmarkConfig(StrictModel):
    """Config kind ``benchmark`` (``configs/benchmark/*.yaml``)."""

    name: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    output_dir: OutputPath = "out/benchmark/default"
    # Pixels of every image: world renders, generator output, recognizer input.
    image_size: int = Field(default=32, ge=16)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int = Field(default=2, ge=1)
    real: RealSection = Field(default_factory=RealSection)
    budget: BudgetSection = Field(default_factory=BudgetSection)
    encoder: RecognizerSource = Field(default_factory=RecognizerSource)
    judge: JudgeSection = Field(default_factory=JudgeSection)
    generators: list[GeneratorEntry] = Field(min_length=1)
    generation: GenerationSection = Field(default_factory=GenerationSection)
    recognition: RecognitionSection = Field(default_factory=RecognitionSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    variation: VariationSection = Field(default_factory=VariationSection)
    distance: DistanceSection = Field(default_factory=DistanceSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    runner: RunnerSection = Field(default_factory=RunnerSection)

    @model_validator(mode="after")
    def _checks(self) -> BenchmarkConfig:
        ids = [g.id for g in self.generators]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(
                f"generator {dup[0]!r} is listed twice; give the entries distinct labels"
            )
        for reserved in ("real", "real-all"):
            if reserved in ids:
                raise ValueError(
                    f"{reserved!r} names a real-data baseline; label the generator otherwise"
                )
        if self.scaling.generator is not None and self.scaling.generator not in ids:
            raise ValueError(
                f"scaling.generator {self.scaling.generator!r}: not a generator of this "
                f"config (have {', '.join(ids)})"
            )
        if self.recognition.view not in (None, self.generation.qc.view):
            raise ValueError(
                f"recognition.view {self.recognition.view!r}: generated sets carry the view "
                f"generation.qc.view ({self.generation.qc.view!r}); name that one or null"
            )
        if self.real.source == "shards" and self.judge.recognizer is None:
            raise ValueError(
                "judge.recognizer: with real.source 'shards' give an independent recognizer "
                "(the world cannot supply other images of your data)"
            )
        return self


def load_benchmark_config(path: str | Path, overrides: list[str] | None = None) -> BenchmarkConfig:
    """A ``benchmark`` config file with its paths made absolute (``load_config``'s rule)."""
    return load_config(path, BenchmarkConfig, overrides)
