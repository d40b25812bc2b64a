"""Partial FC with class centres sharded over 2 CPU processes (gloo) equals the full head."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synthface.pipeline.errors import ConfigError
from synthface.recognition.heads import create_head
from synthface.recognition.heads.partial_fc import class_range
from tests.dist_partial_fc import C, D, N, inputs

ROOT = Path(__file__).resolve().parents[1]


def test_class_ranges_cover_every_class_once():
    for c, w in ((11, 2), (10, 4), (5, 5)):
        ranges = [class_range(c, r, w) for r in range(w)]
        assert ranges[0][0] == 0 and ranges[-1][1] == c
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1


def test_heads_that_need_every_class_refuse_to_shard():
    for name in ("curricularface", "cifp"):
        with pytest.raises(ConfigError, match="cannot shard its class centres"):
            create_head(name, embedding_dim=4, num_classes=10, num_shards=2, shard_index=0)
    with pytest.raises(ConfigError, match="cannot be split"):
        create_head("cosface", embedding_dim=4, num_classes=3, num_shards=4, shard_index=0)
    head = create_head("cosface", embedding_dim=4, num_classes=11, num_shards=2, shard_index=1)
    assert head.weight.shape == (5, 4) and head.class_start == 6  # 6 + 5 classes


def test_sharded_loss_and_gradients_equal_the_full_head_at_sample_rate_1(tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "tests.dist_partial_fc", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank-{r}.pt", weights_only=True) for r in (0, 1)]
    weight, emb, labels = inputs(2)
    for name, kw in (("arcface", {}), ("cosface", {}), ("combined", {"m1": 1.0, "m2": 0.3})):
        full = create_head(name, embedding_dim=D, num_classes=C, **kw)
        with torch.no_grad():
            full.weight.copy_(weight)
        x = emb.clone().requires_grad_(True)
        res = full(x, labels)
        res.loss.backward()
        correct = int((res.logits.argmax(1) == labels).sum())
        for r, got in enumerate(ranks):
            g = got[name]
            assert torch.allclose(g["loss"], res.loss.detach(), atol=1e-5), name
            # each rank's embedding gradient is W x its rows of the full gradient (DDP
            # then averages over the W ranks)
            assert torch.allclose(g["x_grad"] / 2, x.grad[r * N : (r + 1) * N], atol=1e-5)
            rows = slice(g["start"], g["start"] + g["w_grad"].shape[0])
            assert torch.allclose(g["w_grad"], full.weight.grad[rows], atol=1e-5), name
            assert int(g["correct"]) == correct
        assert ranks[0][name]["w_grad"].shape[0] + ranks[1][name]["w_grad"].shape[0] == C
    for r, got in enumerate(ranks):
        s = got["sampled"]
        start, end = class_range(C, r, 2)
        mine = {int(v) for v in labels if start <= v < end}
        assert torch.isfinite(s["loss"]) and mine <= set(s["index"].tolist())
        assert all(start <= int(i) < end for i in s["index"])


def _tiny_grid_dataset(path: Path) -> Path:
    import numpy as np

    from synthface.pipeline.shards import DatasetWriter, Sample, encode_image

    rng = np.random.default_rng(0)
    with DatasetWriter(path, config={"grid": 6}, max_samples=16) as w:
        for i in range(6):
            base = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((4, 4, 1)))
            for j in range(8):
                img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
                w.add(Sample(i, j, encode_image(img, "png"), "png"))
        w.close()
    return path


def test_sharded_training_on_two_processes_resumes_exactly(tmp_path):
    """Each rank checkpoints its own centres and their momentum; a resumed run matches."""
    data = _tiny_grid_dataset(tmp_path / "data")
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "tests.dist_recognition_train", str(tmp_path / "out"), str(data),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / "out" / f"rank-{r}.pt", weights_only=True) for r in (0, 1))
    for r in (r0, r1):
        assert r["steps"] == [4, 4] and r["a"]["head.weight"].shape == (3, 8)  # 6 classes / 2
        assert all(torch.equal(r["a"][k], r["b"][k]) for k in r["a"])
    assert torch.equal(r0["a"]["backbone.fc.weight"], r1["a"]["backbone.fc.weight"])
    assert not torch.equal(r0["a"]["head.weight"], r1["a"]["head.weight"])
    ckpt = tmp_path / "out" / "b" / "checkpoints" / "step-00000004"
    assert {p.name for p in ckpt.glob("head_shard_*")} == {
        "head_shard_0.safetensors",
        "head_shard_1.safetensors",
    }
