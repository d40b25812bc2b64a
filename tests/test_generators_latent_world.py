"""Latent-space world generators: the autoencoder trainer and the *_world64 configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from synthface.generators.autoencoder import build_autoencoder
from synthface.generators.autoencoder_training import (
    AutoencoderTrainConfig,
    build_model,
    images_to_unit,
    load_autoencoder,
    reconstruction_loss,
    train_autoencoder,
)
from synthface.generators.config import AutoencoderConfig, GeneratorConfig
from synthface.generators.sampling import make_scheduler
from synthface.generators.training import make_batch, resume_hash, training_loss
from synthface.pipeline.config import load_config, validate_config
from synthface.pipeline.errors import ConfigError, InputError
from tests.generators_helpers import tiny_config, tiny_encoder, toy_samples, toy_shards

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def ae_config(tmp_path: Path, eval_path: Path, **train) -> AutoencoderTrainConfig:
    """A 16 px f4 VQ autoencoder small enough to train in seconds."""
    data = {
        "model": {"block_out_channels": [8, 8, 8], "norm_num_groups": 8, "num_vq_embeddings": 32},
        "data": {"image_size": 16, "eval_path": str(eval_path), "eval_split": "train"},
        "train": {
            "steps": 4,
            "batch_size": 4,
            "lr": 3e-3,
            "checkpoint_every": 2,
            "log_every": 1,
            "output_dir": str(tmp_path / "ae"),
            **train,
        },
        "eval": {"images": 8, "sheet_images": 4},
    }
    return validate_config(data, AutoencoderTrainConfig, "test")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return toy_shards(tmp_path_factory.mktemp("toy") / "ds", identities=4, per_identity=4)


def test_saved_autoencoder_loads_equal_as_generator_latent_space(tmp_path, shards):
    cfg = ae_config(tmp_path, shards, steps=2)
    result = train_autoencoder(cfg, data=toy_samples())
    final = result["final"]
    quality = json.loads((final / "quality.json").read_text())
    assert quality["images"] == 8 and 0 < quality["psnr_db"] < 100 and -1 <= quality["ssim"] <= 1
    from PIL import Image

    with Image.open(final / "contact_sheet.png") as im:  # 4 originals over 4 reconstructions
        assert im.size[1] == 2 * 16 + 4 and im.size[0] >= 4 * 16
    model = load_autoencoder(final)
    # a training checkpoint (latent scale not measured yet) is refused as a latent space
    (ckpt,) = sorted((final.parent / "checkpoints").glob("step-*"))[-1:]
    with pytest.raises(InputError, match=r"training checkpoint .* use the run's final/"):
        build_autoencoder(AutoencoderConfig(kind="vq", path=str(ckpt)))
    # what a generator config's autoencoder.path loads: the same tensors, its geometry
    ae_cfg = AutoencoderConfig(kind="vq", path=str(final))
    adapter = build_autoencoder(ae_cfg)
    assert ae_cfg.block_out_channels == [8, 8, 8] and ae_cfg.latent_channels == 3
    # the measured latent scale travels with the model into the generator's adapter
    assert adapter.scaling_factor == pytest.approx(quality["scaling_factor"], rel=1e-5)
    assert adapter.scaling_factor != 1.0
    a, b = model.state_dict(), adapter.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a second save of the loaded model is the same bytes
    model.save_pretrained(tmp_path / "again", safe_serialization=True)
    name = "diffusion_pytorch_model.safetensors"
    assert (tmp_path / "again" / name).read_bytes() == (final / name).read_bytes()
    x = images_to_unit([s["image"] for s in toy_samples()[:5]], 16)
    z = adapter.encode(x)
    assert z.shape == (5, 3, 4, 4)
    # the sampler's decode, in chunks, gives the images of one whole-batch decode
    whole = adapter.decode(z).clamp(-1, 1)
    chunked = adapter.decode_images(z, chunk=2)
    assert chunked.shape == whole.shape and torch.allclose(chunked, whole, atol=1e-5)


def test_kl_autoencoder_trains_and_loads(tmp_path, shards):
    cfg = ae_config(tmp_path, shards, steps=1)
    cfg.model.kind = "kl"
    result = train_autoencoder(cfg, data=toy_samples())
    ae_cfg = AutoencoderConfig(kind="kl", path=str(result["final"]))
    adapter = build_autoencoder(ae_cfg)
    assert type(adapter.model).__name__ == "AutoencoderKL" and ae_cfg.latent_channels == 3
    assert result["history"][0]["reg"] > 0  # the KL term is part of the loss


def test_reconstruction_improves_with_training(tmp_path, shards):
    cfg = ae_config(tmp_path, shards, steps=30, checkpoint_every=30)
    images = images_to_unit([s["image"] for s in toy_samples()], 16)
    torch.manual_seed(cfg.train.seed)
    before_model = build_model(cfg.model).eval()
    with torch.no_grad():
        _, before = reconstruction_loss(before_model, images, cfg)
    result = train_autoencoder(cfg, data=toy_samples())
    after_model = load_autoencoder(result["final"]).eval()
    with torch.no_grad():
        _, after = reconstruction_loss(after_model, images, cfg)
    assert after["l1"] < 0.7 * before["l1"], (before, after)


def test_autoencoder_resume_is_exact(tmp_path, shards):
    data = toy_samples()
    straight = train_autoencoder(ae_config(tmp_path / "a", shards, ema_decay=0.9), data=data)
    cfg = ae_config(tmp_path / "b", shards, ema_decay=0.9)
    first = train_autoencoder(cfg, data=data, steps=2)
    assert first["step"] == 2 and first["final"] is None
    resumed = train_autoencoder(cfg, data=data)
    assert [h["step"] for h in resumed["history"]] == [3, 4]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"][2:]]
    name = "diffusion_pytorch_model.safetensors"
    assert (resumed["final"] / name).read_bytes() == (straight["final"] / name).read_bytes()
    # killed after its last checkpoint, before final/: the rerun exports the same final/
    exported = (resumed["final"] / name).read_bytes()
    shutil.rmtree(resumed["final"])
    again = train_autoencoder(cfg, data=data)
    assert again["history"] == [] and (again["final"] / name).read_bytes() == exported
    with pytest.raises(ConfigError, match="of an earlier run"):  # --no-resume: refused
        train_autoencoder(cfg, data=data, resume=False)
    # a changed model is refused, naming the checkpoint
    changed = ae_config(tmp_path / "b", shards, ema_decay=0.5)
    with pytest.raises(ConfigError, match="different config"):
        train_autoencoder(changed, data=data)


def test_train_autoencoder_command(tmp_path, shards, capsys):
    from synthface.pipeline.cli import main

    cfg = tmp_path / "ae.yaml"
    cfg.write_text(
        "kind: autoencoders\n"
        "model: {block_out_channels: [8, 8, 8], norm_num_groups: 8, num_vq_embeddings: 16}\n"
        f"data: {{path: {shards}, eval_split: train, image_size: 16}}\n"
        f"train: {{steps: 2, batch_size: 4, checkpoint_every: 1, output_dir: {tmp_path / 'run'}}}\n"
        "eval: {images: 4}\n"
    )
    assert main(["generator", "train-autoencoder", str(cfg), "--steps", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["final"] is None
    assert main(["generator", "train-autoencoder", str(cfg), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step"] == 2 and out["quality"]["images"] == 4
    assert (Path(out["final"]) / "config.json").is_file()
    # a rerun of the finished run names its model and report, not "n/a"
    assert main(["generator", "train-autoencoder", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert f"autoencoder: {out['final']} (finished before)" in text and "PSNR" in text
    cfg.write_text(cfg.read_text() + "bogus: 1\n")
    assert main(["generator", "train-autoencoder", str(cfg)]) != 0
    assert "bogus" in capsys.readouterr().err


def test_autoencoder_config_rejects_bad_sizes():
    with pytest.raises(ConfigError, match="not divisible by the downsampling factor 4"):
        validate_config({"data": {"image_size": 18}}, AutoencoderTrainConfig, "x.yaml")
    with pytest.raises(ConfigError, match="l1 and mse are both 0"):
        validate_config({"loss": {"l1": 0}}, AutoencoderTrainConfig, "x.yaml")


# ------------------------------------------------------------ identity loss fraction / every k


def _id_loss_parts(cfg, step, calls):
    data = toy_samples()
    enc = tiny_encoder()
    batch = make_batch(data[:8], cfg, enc)
    ae = build_autoencoder(cfg.autoencoder)
    ae.decode = lambda z: calls.append(z.shape[0]) or z  # pixel space: decode is the identity
    from synthface.generators.denoiser import ConditionalDenoiser

    _, parts = training_loss(
        ConditionalDenoiser(cfg),
        ae,
        enc,
        batch,
        cfg,
        torch.Generator().manual_seed(0),
        scheduler=make_scheduler("ddpm", cfg.diffusion),
        use_identity_loss=True,
        step=step,
    )
    return parts


def test_identity_loss_on_part_of_the_batch_and_every_k_steps(tmp_path):
    calls: list[int] = []
    cfg = tiny_config(tmp_path, id3={"id_loss_fraction": 0.25, "id_loss_every": 2})
    assert "id" in _id_loss_parts(cfg, 0, calls) and calls == [2]  # 8 * 0.25 decoded
    assert "id" not in _id_loss_parts(cfg, 1, calls) and calls == [2]  # off-step: no decode
    full = tiny_config(tmp_path)
    assert "id" in _id_loss_parts(full, 1, calls) and calls == [2, 8]
    # defaults leave the resume hash of earlier runs unchanged; other values change it
    base = resume_hash(full)
    dumped = full.model_dump(mode="json")
    assert "id_loss_fraction" in dumped["id3"]
    assert resume_hash(cfg) != base
    assert resume_hash(tiny_config(tmp_path, id3={"id_loss_every": 1})) == base


# ------------------------------------------------------------ the four world64 configs


@pytest.fixture(scope="module")
def world64(tmp_path_factory):
    """64 px world samples and an (untrained) f4 KL autoencoder directory (the configs' kind)."""
    from synthface.pipeline.world.dataset import render_images

    jobs = [(i, j, None) for i in range(2) for j in range(2)]
    samples = [
        {"__key__": f"{i:08d}/{j:04d}", "image": img, "label": i, "meta": meta, "embedding": None}
        for i, j, img, meta in render_images(jobs, seed=0, split="train", size=64)
    ]
    root = tmp_path_factory.mktemp("ae64")
    torch.manual_seed(0)
    build_model(
        AutoencoderTrainConfig.model_validate(
            {"model": {"kind": "kl", "block_out_channels": [8, 8, 8], "norm_num_groups": 8}}
        ).model
    ).save_pretrained(root / "kl", safe_serialization=True)
    return samples, root / "kl"


@pytest.mark.parametrize("name", ["plain", "id3", "uiface", "morphface"])
def test_world64_config_trains_and_samples_in_latent_space(tmp_path, world64, name):
    from synthface.generators.base import load_generator
    from synthface.generators.training import train_generator

    samples, ae = world64
    cfg = load_config(
        ROOT / "configs" / "generators" / f"{name}_world64.yaml",
        GeneratorConfig,
        [
            f"autoencoder.path={ae}",
            "encoder.path=null",
            "conditioning.identity_dim=8",
            "conditioning.mlp_hidden=[16]",
            "train.steps=2",
            "train.batch_size=2",
            "train.checkpoint_every=2",
            f"train.output_dir={tmp_path / 'run'}",
            "sampler.steps=2",
        ],
    )
    assert cfg.image_size == 64 and cfg.autoencoder.kind == "kl"
    enc = tiny_encoder()
    result = train_generator(cfg, data=samples, encoder=enc)
    assert result["step"] == 2 and result["final"] is not None
    assert cfg.sample_size == 16 and cfg.sample_channels == 3  # geometry from the model
    if name == "id3":
        assert "id" in result["history"][0]  # the term ran, decoded through the autoencoder
    gen = load_generator(result["final"], encoder=enc)
    anchors = torch.nn.functional.normalize(torch.randn(2, 8), dim=1).numpy()
    conds = gen.dataset_conditions(anchors, 1, seed=0)
    n = anchors.shape[0]
    attrs = conds["attributes"].reshape(n, -1)
    images = gen.generate(
        conds["identity"].reshape(n, -1),
        attrs if attrs.shape[1] else None,
        conds["seeds"].reshape(-1),
        steps=2,
    )
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8


def test_documented_autoencoder_sequence_runs(tmp_path, monkeypatch, capsys):
    """docs/generators.md: 64 px world shards, then the world KL autoencoder (sized down)."""
    from tests.test_docs_commands import run_doc

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTHFACE_HOME", str(tmp_path))
    monkeypatch.setenv("SYNTHFACE_QUIET", "1")
    run_doc("synthface world make out/world64/train", {"300": "2", "16": "4"})
    run_doc("synthface world make out/world64/eval", {"32": "2", "8": "2"})
    small = ("--set", "train.steps=1", "--set", "train.batch_size=2", "--set", "eval.images=4")
    run_doc(
        "synthface generator train-autoencoder configs/autoencoders/kl_world64.yaml", extra=small
    )
    final = tmp_path / "out/autoencoders/kl_world64/final"
    assert json.loads((final / "quality.json").read_text())["images"] == 4
    assert (final / "contact_sheet.png").is_file()
