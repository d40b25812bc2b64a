"""Generator training across ranks and devices: per-rank data and noise, seeking resume, EMA.

The two-process test runs ``accelerate launch`` on the CPU (gloo); the device-placement
test stands in for a GPU with another dtype.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import synthface.pipeline.shards.decode as shard_decode
from synthface.generators.autoencoder import build_autoencoder
from synthface.generators.data import ShardSource, sequence_stream, training_batches
from synthface.generators.denoiser import ConditionalDenoiser
from synthface.generators.ema import EMA
from synthface.generators.sampling import make_scheduler
from synthface.generators.training import make_batch, snr_cap, step_generator, training_loss
from tests.generators_helpers import tiny_config, tiny_encoder, toy_samples, toy_shards

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _keys(batches, n: int) -> list[list[str]]:
    return [[s["__key__"] for s in next(batches)] for _ in range(n)]


def test_two_processes_train_on_disjoint_data_and_resume_exactly(tmp_path):
    data = toy_shards(tmp_path / "data")
    out = tmp_path / "out"
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "tests.dist_generator_train", str(out), str(data),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank-{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2
    # within a segment (checkpoint_every = 2 steps) the ranks read disjoint samples
    for seg in (slice(0, 2), slice(2, 4)):
        mine = {k for batch in r0["keys"]["a"][seg] for k in batch}
        other = {k for batch in r1["keys"]["a"][seg] for k in batch}
        assert mine and other and not mine & other
    # the resumed run reads exactly what the uninterrupted one read after step 2
    for r in (r0, r1):
        assert r["keys"]["b"] == r["keys"]["a"][:2]
        assert r["keys"]["b-resumed"] == r["keys"]["a"][2:]
    # gradients are averaged across ranks (same weights on both) and resume is exact
    assert r0["weights"]["a"] == r1["weights"]["a"] == r0["weights"]["b-resumed"]
    from synthface.generators.checkpoint import load_tensors

    for name in ("model.safetensors", "training/raw.safetensors"):
        a = load_tensors(out / "a" / "run" / "checkpoints" / "step-00000004" / name)
        b = load_tensors(out / "b" / "run" / "checkpoints" / "step-00000004" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_shard_streams_are_disjoint_per_rank_and_seek_without_decoding(tmp_path, monkeypatch):
    source = ShardSource(toy_shards(tmp_path / "data"), shuffle_buffer=4)

    def batches(rank, world, start=0):
        return training_batches(
            source, batch_size=2, seed=3, start_step=start, segment_steps=3,
            rank=rank, world_size=world,
        )  # fmt: skip

    a, b = _keys(batches(0, 2), 6), _keys(batches(1, 2), 6)
    for seg in (slice(0, 3), slice(3, 6)):
        assert not {k for x in a[seg] for k in x} & {k for x in b[seg] for k in x}
    # with fewer shards than ranks, samples are dealt out instead of shards
    many = [{k for batch in _keys(batches(r, 5), 3) for k in batch} for r in range(5)]
    assert sum(map(len, many)) == len(set().union(*many)) > 20
    # resuming at step 4 (inside the second segment) yields the same batches and decodes
    # only what it trains on
    decoded = []
    real = shard_decode.decode_image
    monkeypatch.setattr(shard_decode, "decode_image", lambda d, k: decoded.append(k) or real(d, k))
    assert _keys(batches(0, 2, start=4), 2) == a[4:6]
    assert len(decoded) == 4


def test_sequence_streams_split_each_epoch_between_ranks_and_seek():
    data = toy_samples()  # 16 samples
    streams = [sequence_stream(data, seed=1, rank=r, world_size=3) for r in range(3)]
    epoch = [
        [next(s)["__key__"] for _ in range(len(range(r, 16, 3)))] for r, s in enumerate(streams)
    ]
    assert sorted(k for part in epoch for k in part) == sorted(s["__key__"] for s in data)
    jumped = sequence_stream(data, seed=1, rank=1, world_size=3, start=7)
    straight = sequence_stream(data, seed=1, rank=1, world_size=3)
    for _ in range(7):
        next(straight)
    assert [next(jumped)["__key__"] for _ in range(9)] == [
        next(straight)["__key__"] for _ in range(9)
    ]


def test_each_rank_draws_its_own_noise():
    a, b = step_generator(0, 5, rank=0), step_generator(0, 5, rank=1)
    assert not torch.equal(torch.randn(8, generator=a), torch.randn(8, generator=b))
    assert torch.equal(
        torch.randn(8, generator=step_generator(0, 5, rank=1)),
        torch.randn(8, generator=step_generator(0, 5, rank=1)),
    )


def test_ema_follows_a_model_moved_after_it_was_created():
    """The GPU failure on CPU: EMA built, then the model moved (here: to float64)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ema = EMA(model, decay=0.5)
    start = {k: v.clone() for k, v in ema.shadow.items()}
    model.to(torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=100)  # rate min(0.5, 101/110) = 0.5
    for k, v in model.state_dict().items():
        assert ema.shadow[k].dtype == torch.float32 and ema.shadow[k].device == v.device
        assert torch.allclose(ema.shadow[k], 0.5 * start[k] + 0.5 * v.float(), atol=1e-6)
    copy = torch.nn.Linear(4, 3).to(torch.bfloat16)
    ema.copy_to(copy)
    assert torch.allclose(copy.weight.float(), ema.shadow["weight"], atol=1e-2)


def test_identity_term_sees_clipped_reconstructions_with_bounded_weight():
    cfg = tiny_config()
    sched = make_scheduler("ddpm", cfg.diffusion)
    ab = sched.alphas_cumprod
    # g_t * |d x0_hat / d eps| = min(1, sqrt(snr)) * sqrt((1 - a)/a) <= 1 at every t
    gain = snr_cap(ab) * ((1 - ab) / ab).sqrt()
    assert float(gain.max()) <= 1.0 + 1e-5 and float(snr_cap(ab[:50]).min()) == 1.0
    assert float(((1 - ab[-1]) / ab[-1]).sqrt()) > 100  # what the raw term multiplies by
    enc = tiny_encoder()
    seen = []
    forward = enc.forward
    enc.forward = lambda x: (
        seen.append((float(x.detach().min()), float(x.detach().max()))) or forward(x)
    )
    batch = make_batch(toy_samples()[:8], cfg, enc)
    torch.manual_seed(0)
    model = ConditionalDenoiser(cfg)
    for term in ("clipped_snr", "raw"):
        cfg.id3.identity_term = term
        seen.clear()
        training_loss(
            model, build_autoencoder(cfg.autoencoder), enc, batch, cfg,
            torch.Generator().manual_seed(4), scheduler=sched, use_identity_loss=True,
        )  # fmt: skip
        lo, hi = seen[0]
        if term == "clipped_snr":
            assert lo >= -1.0 and hi <= 1.0
        else:
            assert max(-lo, hi) > 2.0  # an untrained model's x0_hat leaves [-1, 1] far behind
