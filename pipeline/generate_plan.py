"""What a synthetic-dataset generation run is asked to do, and how it is cut into shards.

``GenerateConfig`` (config kind ``generate``) is the one document behind a run, whether
it is started by ``prefect deployment run``, a schedule, ``make demo`` or a plain Python
call. ``plan_generation`` turns it into per-shard work specs that depend only on the
identity counts, the shard targets and the seed — never on worker count or timing — so
a re-run, a retried task or a resumed run cuts the same shards and writes the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.config import StrictModel, config_hash
from synthface.pipeline.errors import InputError
from synthface.pipeline.paths import InputPath, OutputPath
from synthface.pipeline.qc.config import QCConfig
from synthface.pipeline.schedule import DeploymentSchedule
from synthface.pipeline.shards.plan import plan_shards

PLAN_DIR = "plan"
PLAN_FILE = "plan.json"
ANCHORS_FILE = "anchors.npy"
NOVELTY_FILE = "novelty.json"


class GeneratorSection(StrictModel):
    # Registry name expected of the checkpoint (None = whatever the checkpoint says).
    name: str | None = None
    # A ``save_pretrained`` generator directory (required: there is no sensible default).
    checkpoint: InputPath
    # Conditioning encoder for identity guidance; None = the checkpoint's ``encoder.path``.
    encoder: InputPath | None = None
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    # Run on the CPU when ``device: cuda`` is requested but no GPU is visible.
    allow_cpu_fallback: bool = False
    # Sampler overrides (None = the checkpoint's own sampler settings).
    # Names as in ``synthface.generators.config.SamplerName`` (pipeline may not import generators).
    sampler: Literal["ddpm", "ddim", "dpmpp_2m"] | None = None
    steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0)
    id_guidance_scale: float | None = Field(default=None, ge=0)
    batch_size: int = Field(default=32, ge=1)
    # Denoiser compute precision (bf16: autocast on the GPU; images change slightly).
    precision: Literal["fp32", "bf16"] = "fp32"
    # Generator-specific sampler switches, checked by the generator before anything is
    # written (uiface: two_stage, injection, switch_threshold, switch_bound).
    sampler_options: dict[str, bool | int | float] = Field(default_factory=dict)


class IdentitiesSection(StrictModel):
    count: int = Field(default=32, ge=1, le=10_000_000)
    samples_per_identity: int = Field(default=8, ge=1, le=10_000)
    seed: int = Field(default=0, ge=0)
    # Tammes sweeps for the identity anchors (None = the checkpoint's ``id3.anchor_iterations``).
    anchor_iterations: int | None = Field(default=None, ge=0)
    # A ``.npy`` of N x D identity anchors (N >= count, D = the generator's identity_dim)
    # to use instead of Tammes anchors; the first ``count`` rows, L2-normalised.
    anchors: InputPath | None = None
    # Where Tammes anchors are packed. "auto": inside the region of the generator's
    # training identities when its checkpoint stores it (identity_region.safetensors),
    # else the whole sphere, with a warning; "data": that region (an error without it);
    # "sphere": the whole hypersphere (ID³ as published).
    anchor_region: Literal["auto", "data", "sphere"] = "auto"
    # Share of the training identities' spread the packing axes keep ("data" anchors).
    region_variance: float = Field(default=0.95, gt=0, le=1)
    # Novelty guard: no anchor's cosine to any training identity may exceed this (the
    # checkpoint's stored identities, in the conditioning encoder's space); None = off.
    novelty_max_cos: float | None = Field(default=0.8, ge=-1, le=1)


class OutputSection(StrictModel):
    # Relative: under $SYNTHFACE_HOME or the current directory (synthface.pipeline.paths).
    dir: OutputPath = "out/datasets/demo"
    split: str = Field(default="train", pattern=r"^[a-z][a-z0-9_]*$")
    image_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = Field(default=95, ge=1, le=100)
    max_samples_per_shard: int = Field(default=10_000, ge=1)
    max_shard_bytes: int = Field(default=1 << 30, ge=1)
    # Estimated bytes per sample, used only to cut shards before anything is generated.
    bytes_per_sample: int = Field(default=8_000, ge=1)
    # Store each sample's QC embedding as its ``.npy`` member.
    store_embeddings: bool = True
    # Square size images are resized to (antialiased) before they are encoded and scored;
    # None = the generator's own size (uiface's reference writes 112 px from 128 px).
    image_size: int | None = Field(default=None, ge=8, le=4096)


class ReportSection(StrictModel):
    enabled: bool = True
    contact_identities: int = Field(default=8, ge=1, le=64)
    contact_samples: int = Field(default=8, ge=1, le=64)
    seed: int = 0


class RunnerSection(StrictModel):
    """How shard tasks are executed (orchestration only: never changes the output bytes)."""

    kind: Literal["thread", "dask"] = "thread"
    max_workers: int = Field(default=1, ge=1)
    # dask: an existing scheduler ("tcp://host:8786"); None = start a local cluster.
    dask_address: str | None = None
    # Local cluster size; None = one worker per visible GPU when the generator runs on a
    # GPU (each bound to its GPU), else 2.
    dask_workers: int | None = Field(default=None, ge=1)
    # Local cluster on a machine without GPUs: each worker declares a logical GPU (the
    # same GPU=1 resource and device id a GPU worker gets) but computes on the CPU, so
    # placement can be exercised and tested; needs generator.device: cpu.
    logical_gpus: bool = False
    # torch intra-op threads per worker process (fixed, so float results do not vary).
    torch_threads: int = Field(default=1, ge=1)
    retries: int = Field(default=2, ge=0)
    retry_delay_seconds: float = Field(default=2.0, ge=0)


class GenerateConfig(StrictModel):
    """Config kind ``generate`` (``configs/generate/*.yaml``)."""

    # Deployment name for ``synthface flows serve``: generate-synthetic/<name>.
    name: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    generator: GeneratorSection
    identities: IdentitiesSection = Field(default_factory=IdentitiesSection)
    output: OutputSection = Field(default_factory=OutputSection)
    qc: QCConfig = Field(default_factory=QCConfig)
    report: ReportSection = Field(default_factory=ReportSection)
    runner: RunnerSection = Field(default_factory=RunnerSection)
    # The schedule of its deployment generate-synthetic/<name> (serve and prefect.yaml alike).
    schedule: DeploymentSchedule = Field(default_factory=DeploymentSchedule)


def dataset_config(
    cfg: GenerateConfig,
    *,
    checkpoint_sha256: str,
    generator_name: str,
    anchors_sha256: str | None = None,
    anchor_region: str = "sphere",
    novelty_guard: bool = False,
) -> dict:
    """The part of the config that determines the dataset's bytes (its identity).

    Paths, runner and schedule are left out: moving the checkpoint or adding workers
    must not make a resumed run look like "another dataset". The checkpoint enters
    through its weights' hash instead, and a given anchors file through the hash of the
    anchors taken from it.
    """
    gen = cfg.generator.model_dump(mode="json")
    for key in ("checkpoint", "encoder", "device", "allow_cpu_fallback"):
        gen.pop(key)
    if not gen["sampler_options"]:  # absent = empty: datasets from before the field keep their hash
        gen.pop("sampler_options")
    gen["name"] = generator_name
    gen["checkpoint_sha256"] = checkpoint_sha256
    out = cfg.output.model_dump(mode="json")
    out.pop("dir")
    if out["image_size"] is None:  # absent = the generator's size: older datasets keep their hash
        out.pop("image_size")
    qc = cfg.qc.model_dump(mode="json")
    ids = cfg.identities.model_dump(mode="json")
    if ids.pop("anchors") is not None:
        for key in ("anchor_iterations", "anchor_region", "region_variance", "novelty_max_cos"):
            ids.pop(key)
        ids["anchors_sha256"] = anchors_sha256
    else:
        # What the anchors were actually packed in, not "auto"; whole-sphere anchors without
        # a guard are what every dataset before these options was, so they hash as before.
        ids["anchor_region"] = anchor_region
        if anchor_region != "data":
            ids.pop("region_variance")
        if not novelty_guard:
            ids.pop("novelty_max_cos")
            if anchor_region == "sphere":
                ids.pop("anchor_region")
    return {
        "kind": "generate",
        "generator": gen,
        "identities": ids,
        "output": out,
        "qc": qc,
    }


@dataclass(frozen=True)
class ShardWork:
    """Everything one shard task needs to know besides the loaded models."""

    index: int
    first_identity: int
    last_identity: int
    samples_per_identity: int
    seed: int
    split: str

    @property
    def num_identities(self) -> int:
        return self.last_identity - self.first_identity + 1

    @property
    def num_samples(self) -> int:
        return self.num_identities * self.samples_per_identity

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ShardWork:
        return cls(**d)


def plan_generation(cfg: GenerateConfig) -> list[ShardWork]:
    """Per-shard work specs; identities are never split across shards."""
    ids, out = cfg.identities, cfg.output
    plans = plan_shards(
        [ids.samples_per_identity] * ids.count,
        max_samples=out.max_samples_per_shard,
        max_bytes=out.max_shard_bytes,
        bytes_per_sample=out.bytes_per_sample,
    )
    if len(plans) > 1_000_000:
        raise InputError(f"plan has {len(plans)} shards; raise output.max_samples_per_shard")
    return [
        ShardWork(
            p.index,
            p.first_identity,
            p.last_identity,
            ids.samples_per_identity,
            ids.seed,
            out.split,
        )
        for p in plans
    ]


def plan_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / PLAN_DIR / PLAN_FILE


def anchors_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / PLAN_DIR / ANCHORS_FILE


def novelty_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / PLAN_DIR / NOVELTY_FILE


def write_plan(dataset_dir: str | Path, dataset_cfg: dict, work: list[ShardWork]) -> None:
    doc = {
        "config_hash": config_hash(dataset_cfg),
        "shards": [w.to_dict() for w in work],
    }
    path = plan_path(dataset_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())


def read_plan(dataset_dir: str | Path) -> tuple[str, list[ShardWork]] | None:
    """``(config hash, work)`` of a stored plan, or ``None`` when absent or unreadable."""
    try:
        doc = json.loads(plan_path(dataset_dir).read_text())
        return doc["config_hash"], [ShardWork.from_dict(d) for d in doc["shards"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
