"""Generator core: determinism, batched CFG, guidance, checkpoints and input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthface.generators.base import create_generator, load_generator
from synthface.generators.id3.attributes import AttributePrior
from synthface.generators.id3.generator import ID3Generator
from synthface.pipeline.errors import ConfigError, InputError
from tests.generators_helpers import ID_DIM, tiny_config, tiny_encoder

DEMO_RECOGNIZER = Path(__file__).resolve().parents[1] / "data/demo/models/recognizer/model"

torch.set_num_threads(1)


def _conditions(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ident = rng.standard_normal((n, ID_DIM)).astype(np.float32)
    attrs = rng.uniform(-40, 40, (n, 1)).astype(np.float32)
    return ident, attrs


def _generator(name="id3", seed=0, **overrides):
    torch.manual_seed(seed)
    return create_generator(name, tiny_config(**overrides))


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "ddpm"])
def test_output_for_a_seed_does_not_depend_on_batch(sampler):
    gen = _generator()
    ident, attrs = _conditions(5)
    seeds = [11, 12, 13, 14, 15]
    full = gen.generate(ident, attrs, seeds, sampler=sampler, batch_size=5, return_float=True)
    small = gen.generate(ident, attrs, seeds, sampler=sampler, batch_size=2, return_float=True)
    # a different batch composition: sample 3 alone, and samples in reverse order
    alone = gen.generate(ident[3:4], attrs[3:4], seeds[3:4], sampler=sampler, return_float=True)
    rev = gen.generate(ident[::-1], attrs[::-1], seeds[::-1], sampler=sampler, return_float=True)
    np.testing.assert_allclose(full, small, atol=5e-4)
    np.testing.assert_allclose(full[3], alone[0], atol=5e-4)
    np.testing.assert_allclose(full, rev[::-1], atol=5e-4)
    other = gen.generate(ident[:1], attrs[:1], [999], sampler=sampler, return_float=True)
    assert np.abs(other[0] - full[0]).mean() > 1e-2  # the seed matters
    u8 = gen.generate(ident, attrs, seeds, sampler=sampler)
    assert u8.dtype == np.uint8 and u8.shape == (5, 16, 16, 3)


def test_batched_cfg_equals_separate_passes():
    gen = _generator()
    ident, attrs = _conditions(3)
    a = gen.generate(ident, attrs, [1, 2, 3], sampler="ddim", return_float=True)
    b = gen.generate(ident, attrs, [1, 2, 3], sampler="ddim", batched_cfg=False, return_float=True)
    np.testing.assert_allclose(a, b, atol=5e-4)
    c = gen.generate(ident, attrs, [1, 2, 3], sampler="ddim", guidance_scale=1.0, return_float=True)
    assert np.abs(a - c).mean() > 1e-4  # guidance changes the result


@pytest.mark.parametrize("mode", ["detached", "full"])
def test_identity_guidance_raises_similarity_to_target(mode):
    enc = tiny_encoder()
    gen = _generator(sampler={"id_guidance_mode": mode})
    gen.encoder = enc
    ident, attrs = _conditions(4, seed=3)
    y = torch.nn.functional.normalize(torch.from_numpy(ident), dim=1)

    def sim(scale):
        imgs = gen.generate(
            ident, attrs, [5, 6, 7, 8], id_guidance_scale=scale, steps=6, return_float=True
        )
        return float((enc(torch.from_numpy(imgs)) * y).sum(1).mean())

    base, weak, strong = sim(0.0), sim(30.0), sim(100.0)
    assert base < weak < strong and strong > base + 0.05


def test_identity_guidance_without_encoder_is_a_clear_error():
    gen = _generator()
    ident, attrs = _conditions(2)
    with pytest.raises(ConfigError, match="differentiable identity encoder"):
        gen.generate(ident, attrs, [1, 2], id_guidance_scale=1.0)


def test_plain_generator_ignores_identity_guidance():
    gen = _generator("plain")
    ident, attrs = _conditions(2)
    out = gen.generate(ident, attrs, [1, 2], id_guidance_scale=5.0)  # no encoder needed
    assert out.shape == (2, 16, 16, 3)


@pytest.mark.parametrize(
    ("ident", "attrs", "message"),
    [
        (np.zeros((2, ID_DIM + 1), np.float32), np.zeros((2, 1), np.float32), r"shape \(N, 8\)"),
        (np.full((2, ID_DIM), np.nan, np.float32), np.zeros((2, 1), np.float32), "NaN"),
        (np.ones((2, ID_DIM), np.float32), np.array([[0.0], [np.inf]], np.float32), "NaN"),
        (np.ones((2, ID_DIM), np.float32), np.zeros((2, 3), np.float32), "attribute conditions"),
    ],
)
def test_bad_conditions_are_input_errors(ident, attrs, message):
    gen = _generator()
    with pytest.raises(InputError, match=message):
        gen.generate(ident, attrs, [1, 2])


def test_wrong_number_of_seeds_or_unknown_sampler():
    gen = _generator()
    ident, attrs = _conditions(2)
    with pytest.raises(InputError, match="seeds"):
        gen.generate(ident, attrs, [1, 2, 3])
    with pytest.raises(InputError, match="sampler='euler'"):
        gen.generate(ident, attrs, [1, 2], sampler="euler")


def test_checkpoint_round_trip(tmp_path):
    gen = _generator()
    gen.attribute_prior = AttributePrior.fit([[10.0], [20.0], [-5.0]], ["yaw"], [(-90, 90)])
    path = gen.save_pretrained(tmp_path / "gen")
    assert {p.name for p in path.iterdir()} == {
        "config.json",
        "model.safetensors",
        "attribute_prior.json",
    }
    back = load_generator(path)
    assert isinstance(back, ID3Generator) and back.config == gen.config
    assert np.array_equal(back.attribute_prior.counts, gen.attribute_prior.counts)
    ident, attrs = _conditions(3)
    np.testing.assert_array_equal(
        gen.generate(ident, attrs, [4, 5, 6]), back.generate(ident, attrs, [4, 5, 6])
    )
    # saving again replaces the directory atomically (no leftovers)
    gen.save_pretrained(tmp_path / "gen")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]


def test_incompatible_checkpoint_is_a_clear_error(tmp_path):
    path = _generator().save_pretrained(tmp_path / "gen")
    other = tiny_config(unet={"block_out_channels": [8, 32]})
    with pytest.raises(InputError, match=r"does not match the model architecture.*shape"):
        ID3Generator.from_pretrained(path, config=other)
    other = tiny_config(conditioning={"identity_tokens": 3})
    with pytest.raises(InputError, match="does not match"):
        ID3Generator.from_pretrained(path, config=other)
    cfg = json.loads((path / "config.json").read_text())
    cfg["format"] = "something-else"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="not a synthface-generator config"):
        load_generator(path)
    (path / "config.json").write_text("[]")  # valid JSON, not an object: still one line
    with pytest.raises(InputError, match=r"not a synthface-generator config .*a JSON list"):
        load_generator(path)
    with pytest.raises(InputError, match=r"no config\.json"):
        load_generator(tmp_path / "missing")


def test_unknown_generator_lists_known_names():
    with pytest.raises(ConfigError, match="unknown generator 'nope'") as err:
        create_generator("nope", tiny_config())
    for name in ("id3", "morphface", "plain"):
        assert name in str(err.value).split("known: ")[1]


def test_generator_without_dataset_conditions_is_a_one_line_config_error():
    from synthface.generators.base import DiffusionGenerator

    class Bare(DiffusionGenerator):
        name = "bare"

    gen = Bare(tiny_config())
    with pytest.raises(ConfigError) as err:
        gen.dataset_conditions(np.eye(2, ID_DIM, dtype=np.float32), 2)
    assert "\n" not in str(err.value)
    assert "generator 'bare' cannot sample dataset conditions" in str(err.value)
    conds = _generator().dataset_conditions(np.eye(2, ID_DIM, dtype=np.float32), 3, seed=1)
    assert {k: v.shape for k, v in conds.items()} == {
        "identity": (2, 3, ID_DIM),
        "cos": (2, 3),
        "attributes": (2, 3, 1),
        "seeds": (2, 3),
    }


def test_latent_space_generator_shapes():
    cfg = tiny_config(
        autoencoder={"kind": "kl", "latent_channels": 4, "block_out_channels": [8, 8]}
    )
    assert cfg.sample_size == 8 and cfg.sample_channels == 4
    torch.manual_seed(0)
    gen = create_generator("id3", cfg)
    ident, attrs = _conditions(2)
    out = gen.generate(ident, attrs, [1, 2], steps=2)
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8


def test_onnx_encoder_is_differentiable_and_bad_files_are_named(tmp_path):
    from synthface.generators.encoder import load_identity_encoder
    from synthface.recognition import export_onnx, load_recognizer

    onnx_path = tmp_path / "demo.onnx"
    model = load_recognizer(DEMO_RECOGNIZER)
    export_onnx(model, onnx_path, allow_any_size=True)
    enc = load_identity_encoder(onnx_path)
    assert enc.differentiable and enc.input_hw == (32, 32)
    x = (torch.rand(2, 3, 48, 48) * 2 - 1).requires_grad_(True)  # resized to 32x32 inside
    y = torch.nn.functional.normalize(torch.randn(2, 128), dim=1)
    (enc(x) * y).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    torch_enc = load_identity_encoder(DEMO_RECOGNIZER)
    with torch.no_grad():
        same = (enc(x) * torch_enc(x)).sum(1)
    assert float(same.min()) > 1 - 1e-5
    fake = tmp_path / "r.onnx"
    fake.write_bytes(b"x")
    with pytest.raises(InputError, match="not a loadable ONNX model"):
        load_identity_encoder(fake)
    with pytest.raises(InputError, match="not found"):
        load_identity_encoder(tmp_path / "absent")


def test_pixel_space_sampling_clips_x0_and_latent_space_does_not(monkeypatch):
    """Unclipped x0 predictions near t=T saturate a young pixel model's samples."""
    import synthface.generators.sampling as sampling
    from synthface.generators.config import DiffusionConfig

    d = DiffusionConfig()
    for name in ("ddpm", "ddim"):
        assert sampling.make_scheduler(name, d, clip_x0=True).config.clip_sample is True
        assert sampling.make_scheduler(name, d).config.clip_sample is False
    assert sampling.make_scheduler("dpmpp_2m", d, clip_x0=True).config.thresholding is True
    seen = []
    real = sampling.make_scheduler

    def spy(name, diffusion, *, clip_x0=False):
        seen.append(clip_x0)
        return real(name, diffusion, clip_x0=clip_x0)

    monkeypatch.setattr(sampling, "make_scheduler", spy)
    ident, attrs = _conditions(2)
    _generator("plain", sampler={"steps": 2}).generate(ident, attrs, [0, 1])
    latent = {"kind": "kl", "latent_channels": 4, "block_out_channels": [8, 8]}
    _generator("plain", sampler={"steps": 2}, autoencoder=latent).generate(ident, attrs, [0, 1])
    assert seen == [True, False]
