"""The whole generation in this process, without Prefect (``synthface generate``)."""

from __future__ import annotations

from synthface.generators.dataset.config import GenerateConfig
from synthface.generators.dataset.finalize import finalize_generation
from synthface.generators.dataset.prepare import prepare_generation
from synthface.generators.dataset.shard import produce_shard
from synthface.pipeline.progress import progress_bar


def generate_dataset(cfg: GenerateConfig) -> dict:
    """Prepare, every shard in order (one pooled model), finalize: the flow's bytes."""
    prepared = prepare_generation(cfg)
    with progress_bar(prepared.num_samples, desc="generating") as bar:
        for work in prepared.work:
            result = produce_shard(cfg, work, progress=bar.update)
            if result.skipped:
                bar.update(result.num_samples)
    summary = finalize_generation(cfg, prepared.dataset_config, prepared.work)
    return {**summary, "warnings": list(prepared.warnings)}
