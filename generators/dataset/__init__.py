"""Dataset generation, in one place: config -> plan -> prepare -> shards -> finalize.

``generate_dataset`` runs it all in this process without Prefect; the
``generate-synthetic`` flow (``synthface.flows.generate``) calls the same three steps
as tasks: ``prepare_generation`` once, ``produce_shard`` per shard on whichever worker
the task runner picks, ``finalize_generation`` once. Modules, in the order one image
meets them: ``config``, ``plan``, ``checks``, ``anchors``, ``prepare``, ``placement``,
``producer``, ``stages`` (conditions, images, QC, samples, write), ``shard``,
``finalize``. Names load lazily, so reading a config does not import torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "GenerateConfig": "config",
    "ShardWork": "plan",
    "plan_generation": "plan",
    "dataset_config": "plan",
    "Prepared": "prepare",
    "prepare_generation": "prepare",
    "load_anchors": "anchors",
    "checkpoint_sha256": "checks",
    "resolve_device": "placement",
    "worker_placement": "placement",
    "produce_shard": "shard",
    "ShardResult": "shard",
    "finalize_generation": "finalize",
    "generate_dataset": "run",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
