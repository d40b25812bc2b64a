"""Training through a dataset view (``data.view``): only the view's identities and samples.

The view leaves out a whole identity and one sample of another; every sampler must
never yield either, labels must be the view's 0..K-1 and the head must have K classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthface.pipeline.config import validate_config
from synthface.pipeline.errors import InputError
from synthface.pipeline.qc.views import write_identity_view, write_view
from synthface.pipeline.shards import DatasetWriter, Sample, encode_image, split_manifest
from synthface.recognition.config import TrainConfig
from synthface.recognition.training.data import inspect_dataset, open_batches
from synthface.recognition.training.fields import key_code

IDS, PER, SIZE = 6, 8, 16
DROPPED_ID, DROPPED_SAMPLE = 2, "00000004/0003"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("view") / "ds"
    rng = np.random.default_rng(0)
    with DatasetWriter(root, config={"test": "view", "ids": IDS}, max_samples=20) as writer:
        for i in range(IDS):
            base = rng.integers(0, 256, (1, 1, 3))
            for j in range(PER):
                img = np.clip(base + rng.normal(0, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
                writer.add(Sample(identity=i, index=j, image=encode_image(img, "png"), ext="png"))
        writer.close()
    write_view(
        root,
        "strict",
        split="train",
        config_hash=split_manifest(root)["config_hash"],
        num_identities=IDS,
        identity_counts=[PER] * IDS,
        excluded_identities={DROPPED_ID: ["leak"]},
        excluded_samples={DROPPED_SAMPLE: ["duplicate"]},
        criteria={},
    )
    return root


def _cfg(dataset: Path, out: Path, view: str | None = "strict", **data) -> TrainConfig:
    return validate_config(
        {
            "data": {
                "train": str(dataset),
                "batch_size": 8,
                "num_workers": 0,
                "shuffle_buffer": 16,
                "view": view,
                **data,
            },
            "model": {"backbone": "tiny", "input_size": SIZE, "embedding_dim": 16},
            "head": {"name": "arcface", "params": {"scale": 16, "margin": 0.2}},
            "train": {"output_dir": str(out), "max_steps": 2, "device": "cpu"},
            "checkpoint": {"every_steps": 0},
            "logging": {"every_steps": 1, "progress": False},
        },
        TrainConfig,
    )


def _code(sample: dict) -> float:
    return float(key_code(sample["__key__"]))


@pytest.mark.parametrize(
    "sampler",
    [{"kind": "stream"}, {"kind": "balanced", "per_identity": 2}, {"kind": "random"}],
    ids=lambda s: s["kind"],
)
def test_every_sampler_yields_only_the_view(dataset, tmp_path, sampler):
    cfg = _cfg(dataset, tmp_path / "run", sampler=sampler)
    info = inspect_dataset(cfg.data)
    assert (info.num_classes, info.num_samples) == (IDS - 1, IDS * PER - PER - 1)
    seen: dict[int, set[int]] = {}
    for batch in open_batches(info, cfg.data, num_batches=30, seed=3, fields={"code": _code}):
        for code, label in zip(batch.fields["code"].tolist(), batch.labels.tolist()):
            seen.setdefault(int(code) // 10000, set()).add(label)
        codes = {int(c) for c in batch.fields["code"].tolist()}
        assert 4 * 10000 + 3 not in codes  # the excluded sample
    assert DROPPED_ID not in seen
    # identities 0, 1, 3, 4, 5 become labels 0..4, each identity always one label
    assert seen == {0: {0}, 1: {1}, 3: {2}, 4: {3}, 5: {4}}


def test_head_is_sized_to_the_view(dataset, tmp_path):
    from synthface.recognition.training import train

    result = train(_cfg(dataset, tmp_path / "run"))
    assert result.completed
    from safetensors.torch import load_file

    weights = load_file(result.checkpoint / "model.safetensors")
    heads = [v for k, v in weights.items() if k.startswith("head.") and v.ndim == 2]
    assert [tuple(v.shape) for v in heads] == [(IDS - 1, 16)]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["view"] == "strict"


def test_a_missing_view_is_one_line_naming_the_file(dataset, tmp_path):
    with pytest.raises(InputError) as err:
        inspect_dataset(_cfg(dataset, tmp_path / "run", view="nope").data)
    msg = str(err.value)
    assert "\n" not in msg and str(dataset / "views" / "nope.json") in msg
    assert "strict" in msg  # says which views exist


def test_a_view_of_another_dataset_config_is_refused(dataset, tmp_path):
    import shutil

    other = tmp_path / "ds"
    shutil.copytree(dataset, other)
    path = other / "views" / "strict.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "dataset_config_hash": "0" * 64}))
    with pytest.raises(InputError, match="stale view"):
        inspect_dataset(_cfg(other, tmp_path / "run").data)


def test_identity_view_starts_from_a_base_view(dataset, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    view = write_identity_view(
        ds, "held", excluded_identities={0: ["holdout"]}, base="strict", criteria={"why": "t"}
    )
    assert view["identities"] == [1, 3, 4, 5]
    assert view["excluded_identities"] == {"0": ["holdout"], "2": ["strict:leak"]}
    assert view["excluded_samples"] == {DROPPED_SAMPLE: ["strict:duplicate"]}
    assert view["num_samples"] == 4 * PER - 1
    with pytest.raises(InputError, match="identity 9"):
        write_identity_view(ds, "bad", excluded_identities={9: ["x"]}, criteria={})
