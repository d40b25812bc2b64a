"""What a synthetic-dataset generation run is asked to do (config kind ``generate``).

``GenerateConfig`` is the one document behind a run, whether it is started by
``prefect deployment run``, a schedule, ``make demo`` or a plain Python call. Runner
settings only decide where and how fast shards are made, never their bytes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synthface.generators.config import SamplerName
from synthface.pipeline.config import StrictModel
from synthface.pipeline.paths import InputPath, OutputPath
from synthface.pipeline.qc.config import QCConfig
from synthface.pipeline.schedule import DeploymentSchedule


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
    sampler: SamplerName | None = None
    steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0)
    id_guidance_scale: float | None = Field(default=None, ge=0)
    # Images sampled at once. None = whole identities, about 32 images on a CPU and 128
    # on a GPU (``samples_per_identity`` 50: one or two identities), so no batch is a
    # ragged remainder. Only speed and memory depend on it, never the images.
    batch_size: int | None = Field(default=None, ge=1)
    # Denoiser and decoder precision: auto = bf16 autocast on a GPU, fp32 on the CPU
    # (bf16 images differ slightly from fp32 ones; the dataset's hash records the choice).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile the denoiser once per loaded model (GPU runs: minutes of compilation
    # repaid over long runs; the images may differ in the last bits from eager ones).
    compile: bool = False
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
    # Shards are the unit of work: 2,000 images keep the last round of N workers short
    # (each finishes at most one shard after the others; docs/flows.md, "Balanced work").
    max_samples_per_shard: int = Field(default=2_000, ge=1)
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
    # A finished dataset of real faces (e.g. `synthface world make`'s): as many of its
    # identities as generated rows go on top of the contact sheet, labelled "real N".
    # Only the report reads it, so it is no part of the dataset's identity (hash).
    reference: InputPath | None = None
    reference_split: str = Field(default="train", pattern=r"^[a-z][a-z0-9_]*$")


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
    # Resize, QC embedding, JPEG encoding and sample assembly of one batch run in a
    # second thread while the next batch is sampled (bounded queue, fixed order, same bytes).
    overlap: bool = True
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
