"""A loaded autoencoder decides the latent geometry; a config that disagrees is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthface.generators.autoencoder import build_autoencoder
from synthface.generators.config import AutoencoderConfig
from synthface.pipeline.errors import InputError
from tests.generators_helpers import tiny_config, tiny_encoder, toy_samples


def _save_kl(path, scaling_factor=0.5):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=2,
        norm_num_groups=4,
        scaling_factor=scaling_factor,
    ).save_pretrained(path, safe_serialization=True)
    return path


def test_kl_geometry_comes_from_the_model(tmp_path):
    kl = _save_kl(tmp_path / "kl")
    cfg = AutoencoderConfig(kind="kl", path=str(kl))  # no geometry stated: the model's is taken
    ae = build_autoencoder(cfg)
    assert (cfg.latent_channels, cfg.block_out_channels, cfg.scaling_factor) == (2, [8, 16], 0.5)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    dist = ae.model.encode(x).latent_dist
    assert torch.allclose(ae.encode(x), dist.mode() * 0.5)
    # training samples the latent distribution (the generator's own draws), scaled
    z = ae.encode(x, generator=torch.Generator().manual_seed(3))
    ref = dist.sample(generator=torch.Generator().manual_seed(3)) * 0.5
    assert torch.allclose(z, ref) and not torch.allclose(z, dist.mode() * 0.5)
    assert torch.allclose(ae.decode(z), ae.model.decode(z / 0.5).sample)


def test_kl_generator_trains_and_samples(tmp_path):
    from synthface.generators.base import load_generator
    from synthface.generators.training import train_generator

    kl = _save_kl(tmp_path / "kl")
    cfg = tiny_config(tmp_path, autoencoder={"kind": "kl", "path": str(kl)})
    result = train_generator(cfg, data=toy_samples(), encoder=tiny_encoder())
    gen = load_generator(result["final"], encoder=tiny_encoder())
    assert gen.config.autoencoder.scaling_factor == 0.5
    assert gen.config.autoencoder.latent_channels == 2 and gen.config.sample_size == 8
    ident = np.eye(8, dtype=np.float32)[:2]
    images = gen.generate(ident, np.zeros((2, 1), np.float32), [0, 1], steps=2)
    assert images.shape == (2, 16, 16, 3)


@pytest.mark.parametrize(
    ("stated", "message"),
    [
        ({"scaling_factor": 1.0}, r"autoencoder.scaling_factor is 1.0 in the config but 0.5"),
        ({"latent_channels": 4}, r"autoencoder.latent_channels is 4 in the config but 2"),
        (
            {"block_out_channels": [8, 16, 32]},
            r"block_out_channels is \[8, 16, 32\] .* \(downsampling x4, the model's x2\)",
        ),
    ],
)
def test_a_disagreeing_config_is_refused(tmp_path, stated, message):
    kl = _save_kl(tmp_path / "kl")
    with pytest.raises(InputError, match=message) as err:
        build_autoencoder(AutoencoderConfig(kind="kl", path=str(kl), **stated))
    assert "\n" not in str(err.value)


def test_the_other_class_is_refused(tmp_path):
    kl = _save_kl(tmp_path / "kl")
    with pytest.raises(
        InputError, match=r"class is AutoencoderKL, but autoencoder.kind 'vq' loads VQModel"
    ):
        build_autoencoder(AutoencoderConfig(kind="vq", path=str(kl)))
    with pytest.raises(InputError, match=r"no config\.json"):
        build_autoencoder(AutoencoderConfig(kind="kl", path=str(tmp_path)))
