"""Identity-set shards: the one data format every synthface stage writes and reads.

The readers (which pull in torch and webdataset) are imported lazily, so the CLI and
producers that only write stay light.
"""

from synthface.pipeline.shards.dataset_writer import DatasetWriter
from synthface.pipeline.shards.manifest import (
    SCHEMA_VERSION,
    begin_dataset,
    finalize_dataset,
    load_identity_array,
    load_manifest,
    shard_paths,
    split_manifest,
)
from synthface.pipeline.shards.plan import ShardPlan, plan_shards
from synthface.pipeline.shards.sample import Sample, decode_image, encode_image, make_key, parse_key
from synthface.pipeline.shards.writer import ShardRecord, ShardWriter, completed_shards, write_shard

_LAZY = {
    "make_webdataset": "synthface.pipeline.shards.webdataset_reader",
    "ShardPipeline": "synthface.pipeline.shards.webdataset_reader",
    "ShardIndexDataset": "synthface.pipeline.shards.index_reader",
    "iter_samples": "synthface.pipeline.shards.index_reader",
    "collate_samples": "synthface.pipeline.shards.decode",
    "verify_dataset": "synthface.pipeline.shards.verify",
    "inspect_dataset": "synthface.pipeline.shards.summary",
}

__all__ = [
    "SCHEMA_VERSION",
    "DatasetWriter",
    "Sample",
    "ShardPlan",
    "ShardRecord",
    "ShardWriter",
    "begin_dataset",
    "completed_shards",
    "decode_image",
    "encode_image",
    "finalize_dataset",
    "load_identity_array",
    "load_manifest",
    "make_key",
    "parse_key",
    "plan_shards",
    "shard_paths",
    "split_manifest",
    "write_shard",
    *sorted(_LAZY),
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'synthface.pipeline.shards' has no attribute {name!r}")
