"""The uniform random-access sampler (``data.sampler.kind: random``): epochs, ranks, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthface.pipeline.config import validate_config
from synthface.pipeline.errors import ShardError
from synthface.pipeline.world import make_world_dataset
from synthface.recognition.config import DataConfig, TrainConfig
from synthface.recognition.training import train
from synthface.recognition.training.data import inspect_dataset, open_batches
from synthface.recognition.training.sampler import EpochOrder, ShuffledBatches

IDS, PER, BATCH = 6, 5, 4  # 30 samples: an epoch is not a whole number of global batches


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("random_sampler") / "ds"
    make_world_dataset(root, identities=IDS, per_identity=PER, size=32, max_samples_per_shard=10)
    return root


def _keys(world: Path, *, rank: int, ranks: int, seed: int = 7, first: int = 0, n: int = 8):
    ds = ShuffledBatches(world, "train", batch_size=BATCH, seed=seed, rank=rank,
                         num_processes=ranks, first_batch=first, batches_per_worker=n)  # fmt: skip
    keys = [s["__key__"] for s in ds]
    return [keys[i : i + BATCH] for i in range(0, len(keys), BATCH)]


def test_two_ranks_read_every_sample_once_per_epoch(world):
    per_rank = [_keys(world, rank=r, ranks=2) for r in range(2)]
    # global order: micro-batch g is rank 0's slice, then rank 1's
    stream = [k for g in range(8) for r in range(2) for k in per_rank[r][g]]
    epochs = [stream[i * IDS * PER : (i + 1) * IDS * PER] for i in range(2)]
    for epoch in epochs:
        assert len(epoch) == IDS * PER and len(set(epoch)) == IDS * PER
    assert epochs[0] != epochs[1]  # a new permutation each epoch
    # the ranks never share a position, and their batches mix identities from everywhere
    assert not set(map(tuple, per_rank[0])) & set(map(tuple, per_rank[1]))
    assert len({k.split("/")[0] for k in epochs[0][:12]}) >= 4


def test_order_is_a_function_of_seed_and_position(world):
    a = _keys(world, rank=0, ranks=2, seed=7)
    assert a == _keys(world, rank=0, ranks=2, seed=7)
    assert a != _keys(world, rank=0, ranks=2, seed=8)
    # opened at micro-batch 3 (a resumed run) it reads what an uninterrupted run reads there
    assert _keys(world, rank=0, ranks=2, seed=7, first=3, n=5) == a[3:]


def test_epoch_order_spans_epoch_boundaries():
    order = EpochOrder(5, seed=1)
    ten = order.take(3, 10)  # positions 3..12: the tail of epoch 0, all of 1, head of 2
    assert ten[:2].tolist() == order.permutation(0)[3:].tolist()
    assert sorted(ten[2:7].tolist()) == list(range(5))
    assert order.take(0, 0).size == 0


def test_loader_workers_keep_the_single_process_order(world):
    """Worker w serves batches w, w + W, ...: the DataLoader's round-robin restores order."""

    def batches(workers: int) -> list[list[int]]:
        cfg = DataConfig(train=str(world), batch_size=BATCH, num_workers=workers,
                         sampler={"kind": "random"})  # fmt: skip
        it = open_batches(inspect_dataset(cfg), cfg, num_batches=6, seed=3, rank=1,
                          num_processes=2, first_batch=2)  # fmt: skip
        return [next(it).labels.tolist() for _ in range(6)]

    single = batches(0)
    assert batches(2) == single
    ds = ShuffledBatches(world, "train", batch_size=BATCH, seed=3, rank=1, num_processes=2,
                         first_batch=2, batches_per_worker=6)  # fmt: skip
    labels = [int(ds.dataset.labels[i]) for b in range(2, 8) for i in ds.batch_indices(b)]
    assert [x for b in single for x in b] == labels


def test_manifest_disagreeing_with_the_shards_is_refused(world):
    with pytest.raises(ShardError, match="lists 31 samples but its shards hold 30"):
        ShuffledBatches(world, "train", batch_size=BATCH, seed=0, batches_per_worker=1,
                        num_samples=31)  # fmt: skip


def test_training_with_random_batches_resumes_exactly(world, tmp_path):
    """Straight == stopped off the checkpoint grid and resumed, bit for bit (no replay)."""
    torch.set_num_threads(1)
    cfg = {
        "data": {"train": str(world), "batch_size": 8, "num_workers": 0,
                 "sampler": {"kind": "random"}},
        "model": {"backbone": "tiny", "input_size": 32, "embedding_dim": 16},
        "head": {"name": "cosface", "params": {"scale": 16, "margin": 0.2}},
        "train": {"output_dir": str(tmp_path / "a"), "max_steps": 6, "device": "cpu",
                  "grad_accum": 2},
        "checkpoint": {"every_steps": 4},
        "logging": {"every_steps": 2, "progress": False},
    }  # fmt: skip
    straight = validate_config(cfg, TrainConfig)
    chunked = straight.model_copy(deep=True)
    chunked.train.output_dir = str(tmp_path / "b")
    a = train(straight)
    assert train(chunked, stop_after=3).global_step == 3
    b = train(chunked, resume="latest")
    wa = load_file(a.checkpoint / "model.safetensors")
    wb = load_file(b.checkpoint / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
