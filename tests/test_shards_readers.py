"""Reading shards: the webdataset training pipeline, map-style access, and stock readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from synthface.pipeline.errors import ShardError
from synthface.pipeline.shards import (
    ShardIndexDataset,
    collate_samples,
    iter_samples,
    make_webdataset,
    shard_paths,
)
from synthface.pipeline.shards.folder import from_folder
from tests.test_shards_support import jpeg_file_bytes, make_dataset

torch.set_num_threads(1)
ALL_KEYS = [f"{i:08d}/{j:04d}" for i in range(8) for j in range(3)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, identities=8, per_identity=3, max_samples=6)  # 4 shards
    return root


def _keys(it):
    return [s["__key__"] for s in it]


def test_webdataset_pipeline_through_dataloader_workers(dataset):
    pipe = make_webdataset(dataset, buffer=10, seed=3)
    loader = DataLoader(pipe, batch_size=4, num_workers=2, collate_fn=collate_samples)
    keys, n_batches = [], 0
    for batch in loader:
        n_batches += 1
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (16, 16, 3)
        assert batch["label"].tolist() == [int(k[:8]) for k in batch["__key__"]]
        assert batch["embedding"].shape == (len(batch["__key__"]), 4)
        assert all(m["generator"] == "test" for m in batch["meta"])
        keys += batch["__key__"]
    assert sorted(keys) == ALL_KEYS  # every sample exactly once across both workers
    assert n_batches >= 6


def test_shuffles_are_seeded_and_change_with_the_epoch(dataset):
    a = _keys(make_webdataset(dataset, buffer=8, seed=1))
    assert a == _keys(make_webdataset(dataset, buffer=8, seed=1))
    assert sorted(a) == ALL_KEYS and a != ALL_KEYS
    pipe = make_webdataset(dataset, buffer=8, seed=1)
    pipe.set_epoch(1)
    assert _keys(pipe) != a
    plain = make_webdataset(dataset, shuffle_shards=False, buffer=0, decode=False)
    samples = list(plain)
    assert _keys(samples) == ALL_KEYS and isinstance(samples[0]["image"], bytes)


def test_split_by_node_gives_disjoint_covering_parts(dataset, monkeypatch):
    parts = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        parts.append(set(_keys(make_webdataset(dataset, buffer=4, seed=5, decode=False))))
    assert parts[0].isdisjoint(parts[1])
    assert sorted(parts[0] | parts[1]) == ALL_KEYS
    # without node splitting a multi-rank run is refused rather than duplicating data
    with pytest.raises(ValueError, match="nodesplitter"):
        list(make_webdataset(dataset, split_by_node=False))


def test_resampled_with_epoch_samples(dataset):
    pipe = make_webdataset(dataset, resampled=True, epoch_samples=10, buffer=5, decode=False)
    loader = DataLoader(pipe, batch_size=None, num_workers=2)
    keys = [s["__key__"] for s in loader]
    assert len(keys) == 10 and set(keys) <= set(ALL_KEYS)
    with pytest.raises(ShardError, match="epoch_samples"):
        make_webdataset(dataset, resampled=True)


def test_index_dataset_random_access_through_dataloader(dataset):
    ds = ShardIndexDataset(dataset)
    assert len(ds) == 24 and ds.labels.tolist() == [int(k[:8]) for k in ALL_KEYS]
    seq = list(iter_samples(dataset))
    assert [s["__key__"] for s in seq] == ALL_KEYS
    for i in (0, 7, 23, -1):
        assert ds[i]["__key__"] == seq[i]["__key__"]
        assert np.array_equal(ds[i]["image"], seq[i]["image"])
        assert np.array_equal(ds[i]["embedding"], seq[i]["embedding"])
    with pytest.raises(IndexError):
        ds[24]
    loader = DataLoader(ds, batch_size=5, shuffle=True, num_workers=2, collate_fn=collate_samples)
    keys = [k for batch in loader for k in batch["__key__"]]
    assert sorted(keys) == ALL_KEYS


@pytest.fixture(scope="module")
def from_folder_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ff")
    names = ("ann", "ben", "cid", "dee", "eve")
    for i, name in enumerate(names):
        (root / "src" / name).mkdir(parents=True)
        for j in range(4):
            (root / "src" / name / f"{j}.jpg").write_bytes(jpeg_file_bytes(i * 10 + j))
    from_folder(root / "src", root / "ds", max_samples=6)
    return root / "ds"


def test_stock_webdataset_reads_from_folder_dataset(from_folder_dataset):
    import webdataset as wds

    urls = [str(p) for p in shard_paths(from_folder_dataset)]
    ds = wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("jpg", "cls", "json")
    rows = list(ds)
    assert len(rows) == 20
    assert [r[1] for r in rows] == [i for i in range(5) for _ in range(4)]
    assert rows[0][0].shape == (16, 16, 3) and rows[5][2]["identity_name"] == "ben"


def test_wids_reads_through_the_index(from_folder_dataset, tmp_path):
    wids = pytest.importorskip("wids")
    ds = wids.ShardListDataset(
        str(from_folder_dataset / "train-wids.json"), cache_dir=str(tmp_path), transformations=[]
    )
    assert len(ds) == 20
    src = from_folder_dataset.parent / "src"
    for i in range(20):
        sample = ds[i]
        meta = json.loads(sample[".json"].read())
        assert int(sample[".cls"].read()) == i // 4 == meta["identity"]
        assert sample[".jpg"].read() == (src / meta["source"]).read_bytes()


def test_hugging_face_datasets_reads_from_folder_dataset(from_folder_dataset, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = [str(p) for p in shard_paths(from_folder_dataset)]
    ds = datasets.load_dataset(
        "webdataset", data_files={"train": files}, split="train", cache_dir=str(tmp_path)
    )
    assert ds.num_rows == 20
    assert ds["cls"] == [i for i in range(5) for _ in range(4)]
    assert ds[7]["jpg"].size == (16, 16) and ds[7]["json"]["identity_name"] == "ben"
