"""Validation sets decoded once into a memory-mapped cache, embedded in rank slices.

The reference is what validation did before the cache: decode every image of the
``.bin`` at every pass and embed batch by batch; the cached path must give the same
embeddings bit for bit, hence the same accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthface.pipeline.config import validate_config
from synthface.pipeline.errors import InputError
from synthface.pipeline.formats.verification_bin import write_bin
from synthface.pipeline.shards import decode_image, encode_image
from synthface.recognition.config import TrainConfig
from synthface.recognition.evaluation import bin_cache
from synthface.recognition.evaluation.verification import evaluate_embeddings
from synthface.recognition.training.data import to_model_input
from synthface.recognition.training.validation import (
    embed_sharded,
    open_sets,
    rank_slice,
)

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _world_bin(path, pairs: int = 12, seed: int = 0, fmt: str = "jpg"):
    """A .bin of procedural-world faces: even pairs genuine, odd pairs impostor."""
    from synthface.pipeline.world.dataset import render_images

    jobs = []
    for k in range(pairs):
        a = k // 2
        b = a if k % 2 == 0 else a + 100
        jobs += [(a, k, None), (b, k + 50, None)]
    faces = [img for _, _, img, _ in render_images(jobs, seed=seed, split="eval", size=SIZE)]
    write_bin(path, [encode_image(f, fmt) for f in faces], [k % 2 == 0 for k in range(pairs)])
    return path


def _cfg(tmp_path, bins, batch_size: int = 5) -> TrainConfig:
    return validate_config(
        {
            "data": {"train": str(tmp_path / "unused")},
            "model": {"backbone": "tiny", "input_size": 16, "embedding_dim": 8},
            "train": {"output_dir": str(tmp_path / "run"), "device": "cpu"},
            "validation": {"sets": [str(b) for b in bins], "batch_size": batch_size},
        },
        TrainConfig,
    )


def _backbone():
    from synthface.recognition.backbones import create_backbone

    torch.manual_seed(0)
    return create_backbone("tiny", input_size=16, embedding_dim=8).eval()


def _accelerator(cfg):
    from synthface.recognition.training.loop import _accelerator

    return _accelerator(cfg)


@torch.no_grad()
def _decode_every_pass(backbone, blobs, cfg) -> np.ndarray:
    """Validation before the cache: decode each batch's images, embed, flip-sum."""
    out = []
    bs = cfg.validation.batch_size
    for lo in range(0, len(blobs), bs):
        batch = np.stack([decode_image(b) for b in blobs[lo : lo + bs]])
        x = to_model_input(torch.from_numpy(batch), cfg.model.input_size)
        feats = backbone(x).float() + backbone(x.flip(-1)).float()
        out.append(feats.double().numpy())
    return np.concatenate(out)


def test_cached_validation_equals_decoding_every_pass(tmp_path):
    from synthface.pipeline.formats.verification_bin import read_bin

    path = _world_bin(tmp_path / "world.bin")
    cfg = _cfg(tmp_path, [path])
    acc, backbone = _accelerator(cfg), _backbone()
    (s,) = open_sets(cfg, acc)
    assert s.built and s.images.shape == (24, SIZE, SIZE, 3) and s.name == "world"
    assert isinstance(s.images, np.memmap) and not s.images.flags.writeable
    cached = embed_sharded(backbone, s.images, cfg, acc)

    blobs, issame = read_bin(path)
    reference = _decode_every_pass(backbone, blobs, cfg)
    assert np.array_equal(cached, reference)
    a = evaluate_embeddings(cached, s.issame, nfolds=cfg.validation.folds)
    b = evaluate_embeddings(reference, issame, nfolds=cfg.validation.folds)
    assert a.accuracy == b.accuracy and a.fold_accuracies == b.fold_accuracies
    assert np.array_equal(s.issame, issame)


def test_second_open_decodes_nothing_and_a_changed_bin_rebuilds(tmp_path, monkeypatch):
    calls = []
    decode = bin_cache.decode_blob

    def counting(blob, size, source):
        calls.append(source)
        return decode(blob, size, source)

    monkeypatch.setattr(bin_cache, "decode_blob", counting)
    path = _world_bin(tmp_path / "lfw.bin", pairs=6)
    cache = tmp_path / "cache"
    first = bin_cache.open_decoded_bin(path, cache, workers=3)
    assert first.built and len(calls) == 12
    pixels = np.array(first.images)
    assert np.array_equal(pixels[5], decode_image(_blobs(path)[5]))  # order kept with 3 threads

    calls.clear()
    again = bin_cache.open_decoded_bin(path, cache)
    assert not again.built and calls == [] and again.path == first.path
    assert np.array_equal(np.asarray(again.images), pixels)

    _world_bin(path, pairs=6, seed=1)  # same name, other content
    changed = bin_cache.open_decoded_bin(path, cache)
    assert changed.built and len(calls) == 12 and changed.path != first.path
    assert not np.array_equal(np.asarray(changed.images), pixels)

    # another decode size is another entry; a damaged entry is rebuilt, not trusted
    calls.clear()
    small = bin_cache.open_decoded_bin(path, cache, size=(20, 24))
    assert small.built and small.images.shape == (12, 20, 24, 3) and len(calls) == 12
    with open(changed.path, "r+b") as fh:
        fh.truncate(200)
    calls.clear()
    fixed = bin_cache.open_decoded_bin(path, cache)
    assert fixed.built and len(calls) == 12 and fixed.images.shape == (12, SIZE, SIZE, 3)
    assert not list(cache.glob(".*tmp*"))  # no temporary file left behind
    with pytest.raises(InputError, match=r"decoded cache of .* missing"):
        bin_cache.open_decoded_bin(path, cache, size=(8, 8), build=False)


def _blobs(path):
    from synthface.pipeline.formats.verification_bin import read_bin

    return read_bin(path)[0]


def test_a_validation_pass_reads_the_cache_only(tmp_path, monkeypatch):
    """The Validator decodes when it is built and never during a pass."""
    from types import SimpleNamespace

    from synthface.recognition.training.callbacks import Validator

    path = _world_bin(tmp_path / "held.bin", pairs=10)
    cfg = _cfg(tmp_path, [path], batch_size=8)
    acc, backbone = _accelerator(cfg), _backbone()
    run = SimpleNamespace(
        cfg=cfg,
        accelerator=acc,
        output_dir=tmp_path / "run",
        backbone=lambda: backbone,
        monitor=SimpleNamespace(check=lambda step, run: None),
        say=lambda message: None,
        total_steps=4,
    )
    validator = Validator(run, 0)
    decoded = []
    monkeypatch.setattr(bin_cache, "decode_blob", lambda *a: decoded.append(a))
    monkeypatch.setattr(
        "synthface.pipeline.formats.verification_bin.read_bin", lambda *a: decoded.append(a)
    )
    validator.validate(2, run)
    validator.close(4, run)
    assert decoded == []
    rows = (tmp_path / "run" / "validation.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["2", "held"], ["4", "held"]]
    # a second run over the same output directory reuses the decoded set
    assert not Validator(run, 0).sets[0].built


def test_missing_set_is_one_clear_error(tmp_path):
    from types import SimpleNamespace

    from synthface.recognition.training.callbacks import Validator

    cfg = _cfg(tmp_path, [tmp_path / "nope.bin"])
    run = SimpleNamespace(cfg=cfg, accelerator=_accelerator(cfg), output_dir=tmp_path)
    with pytest.raises(InputError, match=r"validation.sets: .*nope\.bin: no such file"):
        Validator(run, 0)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a pickle")
    cfg = _cfg(tmp_path, [bad])
    with pytest.raises(InputError, match=r"bad\.bin: not a verification \.bin"):
        Validator(SimpleNamespace(cfg=cfg, accelerator=_accelerator(cfg), output_dir=tmp_path), 0)


@pytest.mark.parametrize("n,world", [(24, 1), (24, 2), (25, 4), (9, 4), (3, 8)])
def test_rank_slices_cover_every_row_once_in_order(n, world):
    per = -(-n // world)
    rows = []
    for rank in range(world):
        lo, hi = rank_slice(n, rank, world)
        rows += list(range(lo, hi)) + [None] * (per - (hi - lo))  # padded as gathered
    assert rows[:n] == list(range(n)) and all(r is None for r in rows[n:])


@pytest.mark.slow
def test_two_processes_each_embed_a_slice_and_gather_in_order(tmp_path):
    """2 CPU processes (gloo): one decodes, both embed half, rank 0 gets every row."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from synthface.recognition.training.validation import embed_images

    root = Path(__file__).resolve().parents[1]
    path = _world_bin(tmp_path / "world.bin", pairs=11)  # 22 rows: 11 per rank
    out = tmp_path / "out"
    out.mkdir()
    cmd = [
        str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "tests.dist_validation", str(out), str(path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "rank-0.txt").read_text() == "built=True main=True\n"
    assert (out / "rank-1.txt").read_text() == "built=False main=False\n"
    # a set that cannot be decoded is an error on both ranks, not a rank left at a barrier
    assert "bad.bin: not a verification .bin" in (out / "error-0.txt").read_text()
    assert "could not be decoded on another process" in (out / "error-1.txt").read_text()

    cfg = _cfg(out, [path])
    (s,) = open_sets(cfg, _accelerator(cfg))
    assert not s.built  # the set the two processes decoded
    whole = embed_images(_backbone(), s.images, cfg, _accelerator(cfg)).double().numpy()
    gathered = np.load(out / "gathered.npy")
    assert gathered.shape == whole.shape
    np.testing.assert_allclose(gathered, whole, rtol=1e-5, atol=1e-6)
    a = evaluate_embeddings(gathered, s.issame, nfolds=10)
    b = evaluate_embeddings(whole, s.issame, nfolds=10)
    assert a.accuracy == b.accuracy


def _free_port() -> int:
    """A port of its own, so that two launches at once never meet on the default one."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
