"""The shard stages: overlapped post-processing writes the sequential bytes; batch and
precision defaults; a checkpoint is hashed once per process; torch.compile runs."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from synthface.generators.dataset import checks, generate_dataset, prepare_generation
from synthface.generators.dataset import producer as producer_pool
from synthface.generators.dataset import shard as shard_module
from synthface.generators.dataset.config import GenerateConfig
from synthface.generators.dataset.plan import ShardWork
from synthface.generators.dataset.shard import produce_shard
from synthface.generators.dataset.stages import batch_plan, resolve_precision
from synthface.pipeline.shards import iter_samples
from tests.flows_helpers import make_tiny_models, tiny_config
from tests.test_flows_units import tree_hashes


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_models(root)
    return root


def test_overlapped_shards_write_the_sequential_bytes(models, tmp_path, monkeypatch):
    """Batches of one identity (batch_size 3 = samples per identity), so QC/encoding of
    batch k runs in the helper thread while batch k+1 is sampled."""
    seen_threads = set()
    real_qc = shard_module.stages.qc

    def recording_qc(*args, **kwargs):
        seen_threads.add(threading.current_thread().name)
        return real_qc(*args, **kwargs)

    monkeypatch.setattr(shard_module.stages, "qc", recording_qc)
    trees = {}
    for overlap in (False, True):
        cfg = tiny_config(
            models,
            tmp_path / f"overlap-{overlap}" / "ds",
            generator={"batch_size": 3},
            runner={"overlap": overlap},
        )
        generate_dataset(cfg)
        trees[overlap] = tree_hashes(Path(cfg.output.dir))
    assert trees[True] == trees[False]
    assert any(name.startswith("shard-post") for name in seen_threads)
    assert threading.main_thread().name in seen_threads  # the sequential run


def test_a_failing_post_stage_fails_the_shard_and_writes_nothing(models, tmp_path, monkeypatch):
    cfg = tiny_config(models, tmp_path / "ds", generator={"batch_size": 3})
    prepared = prepare_generation(cfg)
    calls = []

    def broken(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_samples(*args, **kwargs)

    real_samples = shard_module.stages.samples
    monkeypatch.setattr(shard_module.stages, "samples", broken)
    with pytest.raises(OSError, match="disk full"):
        produce_shard(cfg, prepared.work[0])
    assert not list((Path(cfg.output.dir) / "shards").glob("*.tar"))
    assert calls[1].startswith("shard-post")


def test_a_worker_whose_checkpoint_differs_from_the_plan_refuses(models, tmp_path):
    """Another copy at the same path on a remote host, or weights overwritten between the
    plan and a shard: the shard is refused, not written from other weights."""
    import shutil

    from synthface.pipeline.errors import InputError

    gen_dir, _ = make_tiny_models(models)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(gen_dir, ckpt)
    cfg = tiny_config(models, tmp_path / "ds", generator={"checkpoint": str(ckpt)})
    prepared = prepare_generation(cfg)
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"hashes to \w+, but .* was planned with"):
        produce_shard(cfg, prepared.work[0])
    assert not list((Path(cfg.output.dir) / "shards").glob("*.tar"))


def test_the_pool_holds_the_models_of_one_key_only(models, tmp_path):
    """A process that moves on to other models (a benchmark's generators in turn) does not
    keep the earlier ones loaded."""
    import shutil

    gen_dir, _ = make_tiny_models(models)
    shutil.copytree(gen_dir, tmp_path / "other")
    (tmp_path / "other" / "config.json").touch()  # same bytes, its own path: another key
    a = tiny_config(models, tmp_path / "a")
    b = tiny_config(models, tmp_path / "b", generator={"checkpoint": str(tmp_path / "other")})
    producer_pool.clear_producer_cache()
    try:
        first = producer_pool.borrow_producer(a, "cpu")
        producer_pool.return_producer(first)
        assert producer_pool.borrow_producer(a, "cpu") is first  # reused
        producer_pool.return_producer(first)
        second = producer_pool.borrow_producer(b, "cpu")
        producer_pool.return_producer(second)
        assert list(producer_pool._IDLE) == [second.key]  # a's model was let go
    finally:
        producer_pool.clear_producer_cache()


def test_precision_auto_never_mixes_bf16_and_fp32_shards(models, tmp_path):
    """auto resolves per worker: a dataset begun on CPUs (fp32) and resumed on a GPU worker
    (bf16) would hold both under one hash. The provenance says how each shard was made."""
    from synthface.generators.dataset.placement import read_provenance
    from synthface.pipeline.errors import ConfigError

    cfg = tiny_config(models, tmp_path / "ds")
    prepared = prepare_generation(cfg)
    produce_shard(cfg, prepared.work[0])
    assert [r["precision"] for r in read_provenance(cfg.output.dir)] == ["fp32"]
    check = shard_module._check_one_precision
    check(cfg, Path(cfg.output.dir), prepared.work[1], "fp32")  # the same: fine
    with pytest.raises(ConfigError, match=r"auto is bf16 on this worker, but shard 0 .* fp32"):
        check(cfg, Path(cfg.output.dir), prepared.work[1], "bf16")
    check(cfg, Path(cfg.output.dir), prepared.work[0], "bf16")  # redoing shard 0 itself
    explicit = tiny_config(models, tmp_path / "ds", generator={"precision": "fp32"})
    check(explicit, Path(cfg.output.dir), prepared.work[1], "bf16")  # not auto: no clash


def test_batches_are_whole_identities_sized_for_the_device():
    work = ShardWork(0, 10, 19, 50, 0, "train")
    cfg = GenerateConfig.model_validate({"generator": {"checkpoint": "x"}})
    cpu, cpu_size = batch_plan(cfg, work, "cpu")
    gpu, gpu_size = batch_plan(cfg, work, "cuda:3")
    assert cpu_size == 50 and [len(r) for r in cpu] == [1] * 10  # no 32 + 18 split
    assert gpu_size == 100 and [len(r) for r in gpu] == [2] * 5
    assert [i for r in gpu for i in r] == list(range(10, 20))
    fixed = cfg.model_copy(
        update={"generator": cfg.generator.model_copy(update={"batch_size": 32})}
    )
    rows, size = batch_plan(fixed, work, "cpu")
    assert size == 32 and len(rows) == 10  # the old chunking: one identity, sampled 32 + 18


def test_precision_auto_is_bf16_on_a_gpu_and_fp32_on_the_cpu():
    assert resolve_precision("auto", "cuda:0") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cuda:1") == "fp32"


def test_checkpoint_is_hashed_once_per_process_until_it_changes(models, monkeypatch):
    gen_dir, _ = make_tiny_models(models)
    first = checks.checkpoint_sha256(gen_dir)
    reads = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        reads.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    assert checks.checkpoint_sha256(gen_dir) == first
    assert not [r for r in reads if r.endswith(".safetensors")]
    config = gen_dir / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert checks.checkpoint_sha256(gen_dir) == first  # same bytes, hashed again
    assert [r for r in reads if r.endswith("model.safetensors")]


def test_a_latent_checkpoints_decoder_is_part_of_its_hash(models, tmp_path):
    """A latent generator's images come from its autoencoder/ folder too: other decoder
    weights are another dataset, never a resume of this one."""
    import shutil

    gen_dir, _ = make_tiny_models(models)
    ckpt = tmp_path / "latent"
    shutil.copytree(gen_dir, ckpt)
    before = checks.checkpoint_sha256(ckpt)
    weights = ckpt / "autoencoder" / "diffusion_pytorch_model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"decoder one")
    with_decoder = checks.checkpoint_sha256(ckpt)
    weights.write_bytes(b"decoder two")  # same size, new bytes
    assert len({before, with_decoder, checks.checkpoint_sha256(ckpt)}) == 3
    assert checks.checkpoint_sha256(gen_dir) == before  # a pixel checkpoint hashes as before


def test_compile_option_runs_the_denoiser_through_torch_compile(models, tmp_path, monkeypatch):
    """``generator.compile`` hands the denoiser to torch.compile (TorchDynamo traces it
    for real; the eager backend stands in for inductor, whose C++ build takes minutes on
    this CPU: bench/gpu/gen_throughput.sh times the real one), and the dataset's images
    are those of the plain run."""
    import torch

    compiled = []
    real_compile = torch.compile

    def eager_compile(model, **kwargs):
        compiled.append(type(model).__name__)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    producer_pool.clear_producer_cache()
    images = {}
    for flag in (False, True):
        cfg = tiny_config(
            models,
            tmp_path / f"compile-{flag}" / "ds",
            identities={"count": 2},
            generator={"compile": flag},
            report={"enabled": False},
        )
        generate_dataset(cfg)
        images[flag] = np.stack([s["image"] for s in iter_samples(cfg.output.dir)]).astype(int)
    producer_pool.clear_producer_cache()
    assert compiled == ["ConditionalDenoiser"]
    assert np.abs(images[True] - images[False]).max() <= 2
