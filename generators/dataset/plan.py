"""How a generation run is cut into shards, and what makes two runs the same dataset.

``plan_generation`` turns a config into per-shard work specs that depend only on the
identity counts, the shard targets and the seed — never on worker count or timing — so
a re-run, a retried task or a resumed run cuts the same shards and writes the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from synthface.generators.dataset.config import GenerateConfig
from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.config import config_hash
from synthface.pipeline.errors import InputError
from synthface.pipeline.shards.plan import plan_shards

PLAN_DIR = "plan"
PLAN_FILE = "plan.json"
ANCHORS_FILE = "anchors.npy"
NOVELTY_FILE = "novelty.json"


def dataset_config(
    cfg: GenerateConfig,
    *,
    checkpoint_sha256: str,
    generator_name: str,
    anchors_sha256: str | None = None,
    anchor_region: str = "sphere",
    novelty_guard: bool = False,
    model_digests: dict[str, str] | None = None,
) -> dict:
    """The part of the config that determines the dataset's bytes (its identity).

    Paths, runner and schedule are left out: moving the checkpoint or adding workers
    must not make a resumed run look like "another dataset". The checkpoint enters
    through its weights' hash instead, a given anchors file through the hash of the
    anchors taken from it, and the other models (``model_digests``: the identity encoder
    when it guides sampling, the QC recognizer, gallery and quality model) through their
    files' hashes, so a model swapped in place is another dataset and a moved one is not.
    """
    digests = dict(model_digests or {})
    gen = cfg.generator.model_dump(mode="json")
    for key in ("checkpoint", "encoder", "device", "allow_cpu_fallback"):
        gen.pop(key)
    if not gen["sampler_options"]:  # absent = empty: datasets from before the field keep their hash
        gen.pop("sampler_options")
    if gen["batch_size"] is None:  # whole identities per batch: images do not depend on it
        gen.pop("batch_size")
    if not gen["compile"]:
        gen.pop("compile")
    gen["name"] = generator_name
    gen["checkpoint_sha256"] = checkpoint_sha256
    if digests.get("encoder"):
        gen["encoder_sha256"] = digests["encoder"]
    out = cfg.output.model_dump(mode="json")
    out.pop("dir")
    if out["image_size"] is None:  # absent = the generator's size: older datasets keep their hash
        out.pop("image_size")
    qc = cfg.qc.model_dump(mode="json")
    qc.pop("block")  # a memory knob: the scores are the same
    for key in ("recognizer", "gallery", "quality_model"):
        qc.pop(key)
        if digests.get(f"qc.{key}"):
            qc[f"{key}_sha256"] = digests[f"qc.{key}"]
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
        "checkpoint_sha256": dataset_cfg["generator"]["checkpoint_sha256"],
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


def planned_checkpoint_sha256(dataset_dir: str | Path) -> str | None:
    """The generator checkpoint hash the plan was made with (``None``: a plan without it)."""
    try:
        return json.loads(plan_path(dataset_dir).read_text()).get("checkpoint_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def read_novelty(dataset_dir: str | Path) -> dict | None:
    """The anchors' distance to the generator's training identities (``plan/novelty.json``)."""
    try:
        return json.loads(novelty_path(dataset_dir).read_text())
    except (OSError, ValueError):
        return None
