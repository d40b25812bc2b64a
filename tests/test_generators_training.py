"""Generator training: learning happens, the ID term reaches the UNet, resume is exact."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from synthface.generators.autoencoder import build_autoencoder
from synthface.generators.base import load_generator
from synthface.generators.checkpoint import load_tensors, save_tensors
from synthface.generators.denoiser import ConditionalDenoiser
from synthface.generators.sampling import make_scheduler
from synthface.generators.training import (
    identity_weight,
    make_batch,
    train_generator,
    training_loss,
)
from synthface.pipeline.errors import ConfigError, InputError
from tests.generators_helpers import tiny_config, tiny_encoder, toy_samples

torch.set_num_threads(1)


def _eval_loss(model, cfg, batch, encoder, use_id):
    """Loss on a fixed batch with fixed timesteps/noise (same generator seed each time)."""
    with torch.no_grad():
        _, parts = training_loss(
            model,
            build_autoencoder(cfg.autoencoder),
            encoder,
            batch,
            cfg,
            torch.Generator().manual_seed(123),
            scheduler=make_scheduler("ddpm", cfg.diffusion),
            use_identity_loss=use_id,
        )
    return parts


def test_identity_weight_reading():
    t = torch.tensor([0, 500, 999])
    w = identity_weight(t, 1000)
    assert torch.all(w > 0) and torch.all(w[:-1] > w[1:])  # positive, largest at low noise
    assert abs(float(w[0]) - 0.25) < 1e-6


def test_a_few_training_steps_lower_the_loss(tmp_path):
    cfg = tiny_config(tmp_path, train={"steps": 40, "checkpoint_every": 40, "log_every": 40})
    data = toy_samples()
    enc = tiny_encoder()
    batch = make_batch(data[:16], cfg, enc)
    torch.manual_seed(cfg.train.seed)
    before = _eval_loss(ConditionalDenoiser(cfg), cfg, batch, enc, True)
    result = train_generator(cfg, data=data, encoder=enc)
    assert result["step"] == 40 and (result["final"] / "model.safetensors").is_file()
    trained = ConditionalDenoiser(cfg)
    trained.load_state_dict(
        load_tensors(
            tmp_path / "run" / "checkpoints" / "step-00000040" / "training" / "raw.safetensors"
        )
    )
    after = _eval_loss(trained, cfg, batch, enc, True)
    assert after["mse"] < 0.7 * before["mse"], (before, after)
    assert after["loss"] < before["loss"]
    # the exported generator samples and carries the fitted attribute prior
    gen = load_generator(result["final"])
    assert gen.attribute_prior is not None and gen.attribute_prior.total == 40 * 4
    imgs = gen.generate(np.ones((2, 8), np.float32), None, [1, 2])
    assert imgs.shape == (2, 16, 16, 3)
    # and the region of its training identities: each the mean encoder embedding of its images
    from synthface.generators.region import load_identity_region

    region = load_identity_region(result["final"])
    assert region.num_identities == 4 and region.meta["num_images"] == 4 * 4
    first = enc.embed_uint8(np.stack([s["image"] for s in data if s["label"] == 0][:16]))
    want = first.mean(0) / np.linalg.norm(first.mean(0))
    assert np.abs(region.centroids[0] - want).max() < 2e-3  # stored as float16


def test_identity_loss_gradient_reaches_the_unet():
    cfg = tiny_config()
    enc = tiny_encoder()
    torch.manual_seed(0)
    model = ConditionalDenoiser(cfg)
    batch = make_batch(toy_samples()[:8], cfg, enc)
    ae = build_autoencoder(cfg.autoencoder)
    sched = make_scheduler("ddpm", cfg.diffusion)

    def grads(use_id):
        model.zero_grad()
        loss, _ = training_loss(
            model,
            ae,
            enc,
            batch,
            cfg,
            torch.Generator().manual_seed(7),
            scheduler=sched,
            use_identity_loss=use_id,
        )
        loss.backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    with_id, without = grads(True), grads(False)
    diff = {k: float((with_id[k] - without[k]).abs().max()) for k in without}
    assert diff["unet.conv_in.weight"] > 0
    assert diff["unet.conv_out.weight"] > 0
    assert max(v for k, v in diff.items() if ".attn2." in k) > 0  # through cross-attention
    assert diff["cond.identity_mlp.0.weight"] > 0
    assert all(p.grad is None for p in enc.parameters())  # the encoder stays frozen


def test_resume_is_exact(tmp_path):
    data, enc = toy_samples(), tiny_encoder()
    straight = tiny_config(tmp_path / "a")
    train_generator(straight, data=data, encoder=enc)
    resumed = tiny_config(tmp_path / "b")
    first = train_generator(resumed, data=data, encoder=enc, steps=2)
    assert first["final"] is None and first["step"] == 2
    second = train_generator(resumed, data=data, encoder=enc)
    assert second["step"] == 4 and len(second["history"]) == 2
    for name in ("model.safetensors", "training/raw.safetensors"):
        a = load_tensors(tmp_path / "a" / "run" / "checkpoints" / "step-00000004" / name)
        b = load_tensors(tmp_path / "b" / "run" / "checkpoints" / "step-00000004" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # only keep_checkpoints (2) survive
    assert len(list((tmp_path / "b" / "run" / "checkpoints").iterdir())) == 2
    # killed after its last checkpoint, before final/: the rerun exports the same final/
    final = second["final"]
    exported = (final / "model.safetensors").read_bytes()
    shutil.rmtree(final)
    again = train_generator(resumed, data=data, encoder=enc)
    assert again["history"] == [] and again["final"] == final
    assert (final / "model.safetensors").read_bytes() == exported
    # safetensors' own metadata order changes from save to save; ours does not
    tensors, meta = load_tensors(final / "model.safetensors"), {"b": "2", "a": "1", "c": "3"}
    saves = set()
    for _ in range(20):
        save_tensors(tmp_path / "again.safetensors", tensors, meta)
        saves.add((tmp_path / "again.safetensors").read_bytes())
    assert len(saves) == 1
    # and a finished run is not exported twice
    assert train_generator(resumed, data=data, encoder=enc)["final"] is None
    # --no-resume into a run's folder is refused, nothing deleted
    with pytest.raises(ConfigError, match=r"holds 2 checkpoint\(s\) of an earlier run"):
        train_generator(resumed, data=data, encoder=enc, resume=False)
    assert len(list((tmp_path / "b" / "run" / "checkpoints").iterdir())) == 2


def test_resume_from_a_damaged_checkpoint_names_the_file(tmp_path, caplog):
    """The newest checkpoint damaged after it was written (a truncated copy, a full disk):
    resume stops naming the file; --resume-allow-partial falls back and says so."""
    import shutil

    data, enc = toy_samples(), tiny_encoder()
    good = tmp_path / "good"
    train_generator(tiny_config(good, train={"keep_checkpoints": 3}), data=data, encoder=enc)
    damages = [
        ("training/raw.safetensors", lambda p: p.write_bytes(p.read_bytes()[:-100])),
        ("model.safetensors", lambda p: p.write_bytes(p.read_bytes() + b"x")),
        ("training/optimizer.pt", lambda p: p.write_bytes(p.read_bytes()[:1000])),
        ("training/optimizer.pt", lambda p: p.unlink()),
        ("training/state.json", lambda p: p.write_text("{not json")),
    ]
    for k, (name, damage) in enumerate(damages):
        run = tmp_path / f"case{k}"
        shutil.copytree(good, run)
        target = run / "run" / "checkpoints" / "step-00000004" / name
        damage(target)
        more = tiny_config(run, train={"keep_checkpoints": 3, "steps": 6})
        with pytest.raises(InputError) as err:
            train_generator(more, data=data, encoder=enc)
        assert str(err.value).startswith(str(target)), (name, str(err.value))
        assert "--resume-allow-partial" in str(err.value)
    result = train_generator(more, data=data, encoder=enc, resume_allow_partial=True)
    assert result["step"] == 6 and [h["step"] for h in result["history"]] == [3, 4, 5, 6]
    assert "dropping checkpoint step-00000004" in caplog.text
    assert "resuming from step-00000002, steps 3..4 are trained again" in caplog.text


def test_resume_refuses_a_changed_config(tmp_path):
    data, enc = toy_samples(), tiny_encoder()
    train_generator(tiny_config(tmp_path), data=data, encoder=enc, steps=2)
    changed = tiny_config(tmp_path, train={"lr": 1e-2})
    with pytest.raises(ConfigError, match="different config"):
        train_generator(changed, data=data, encoder=enc)


def test_missing_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="differentiable identity encoder"):
        train_generator(tiny_config(tmp_path), data=toy_samples())
    plain = tiny_config(tmp_path, generator="plain")
    with pytest.raises(ConfigError, match="no identity encoder"):
        train_generator(plain, data=toy_samples())


def test_plain_trains_on_cached_embeddings_without_encoder(tmp_path):
    data = toy_samples()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 8)).astype(np.float32)
    for s in data:
        s["embedding"] = centres[s["label"]]
    cfg = tiny_config(tmp_path, generator="plain", data={"use_cached_embeddings": True})
    assert train_generator(cfg, data=data, steps=2)["step"] == 2


def test_training_input_errors(tmp_path):
    enc = tiny_encoder()
    data = toy_samples()
    wrong_dim = tiny_config(tmp_path, conditioning={"identity_dim": 16})
    with pytest.raises(InputError, match="identity_dim=16"):
        make_batch(data[:2], wrong_dim, enc)
    del data[0]["meta"]["attributes"]
    with pytest.raises(InputError, match="has no 'yaw'"):
        make_batch(data[:2], tiny_config(), enc)
    cached = tiny_config(data={"use_cached_embeddings": True})
    with pytest.raises(InputError, match="no cached embedding"):
        make_batch(toy_samples()[:2], cached, enc)
    nan = toy_samples()[:2]
    for s in nan:
        s["embedding"] = np.full(8, np.nan, np.float32)
    with pytest.raises(InputError, match="NaN"):
        make_batch(nan, cached, enc)
