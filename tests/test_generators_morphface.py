"""MorphFace: style encoder, context blending, style prior, style sources, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthface.generators.base import create_generator, load_generator
from synthface.generators.morphface.generator import fit_style_prior
from synthface.generators.morphface.identities import MarginFilter
from synthface.generators.morphface.model import (
    BlendedAttnProcessor,
    MorphFaceConditioner,
    blend_weights,
)
from synthface.generators.morphface.prior import StylePrior
from synthface.generators.morphface.styles import ExternalStyleSource, WorldStyleSource
from synthface.generators.training import train_generator
from synthface.pipeline.errors import ConfigError, InputError
from tests.generators_helpers import ID_DIM, tiny_config, tiny_encoder

torch.set_num_threads(1)


def mf_config(tmp_path=None, **overrides):
    morph = {"map_size": 32, "style_grid": 2, "style_channels": [8, 16]}
    morph.update(overrides.pop("morphface", {}))
    return tiny_config(
        tmp_path,
        generator="morphface",
        conditioning={"attributes": []},
        morphface=morph,
        id3={"id_loss_weight": 0.0},
        **overrides,
    )


def world_samples(identities=5, per_identity=4, size=32):
    from synthface.pipeline.world.dataset import render_images

    jobs = [(i, j, None) for i in range(identities) for j in range(per_identity)]
    return [
        {"__key__": f"{i:08d}/{j:04d}", "image": img, "label": i, "meta": meta, "embedding": None}
        for i, j, img, meta in render_images(jobs, seed=0, split="train", size=size)
    ]


@pytest.fixture(scope="module")
def world_prior():
    return fit_style_prior(mf_config(), world_samples())


def _generator(prior, seed=0, **overrides):
    torch.manual_seed(seed)
    return create_generator("morphface", mf_config(**overrides), style_prior=prior)


def test_style_encoder_sees_each_map():
    torch.manual_seed(0)
    cond = MorphFaceConditioner(mf_config()).eval()
    ident = torch.randn(2, ID_DIM)
    maps = torch.rand(2, 9, 32, 32) * 2 - 1
    base = cond(ident, maps)
    k = cond.identity_tokens
    for name, channels in (("normal", slice(0, 3)), ("albedo", slice(3, 6)), ("shading", (6, 9))):
        changed = maps.clone()
        sl = channels if isinstance(channels, slice) else slice(*channels)
        changed[:, sl] = torch.rand(2, 3, 32, 32) * 2 - 1
        out = cond(ident, changed)
        assert torch.equal(out[:, :k], base[:, :k]), name  # identity tokens untouched
        assert (out[:, k:] - base[:, k:]).abs().max() > 1e-3, f"{name} map is ignored"


def test_world_style_maps_follow_the_parameters(world_prior):
    src = WorldStyleSource()
    params = np.tile(world_prior.mean, (2, 1))
    params[1, src.param_names.index("yaw")] += 40.0
    maps = src.render(params, 32)
    assert maps.shape == (2, 9, 32, 32) and np.isfinite(maps).all()
    normal_x = maps[:, 0][np.abs(maps[:, 0]) > 0]
    assert np.abs(maps[0, :3] - maps[1, :3]).mean() > 0.02 and normal_x.size
    with pytest.raises(InputError, match=r"shape \(N, 47\)"):
        src.render(params[:, :10], 32)
    with pytest.raises(InputError, match="identity_coeffs"):
        src.sample_params({"__key__": "x", "meta": {}})


def test_blended_attention_matches_the_default_on_one_context():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(16, cross_attention_dim=12, heads=2, dim_head=8)
    x, ctx = torch.randn(3, 10, 16), torch.randn(3, 6, 12)
    proc = BlendedAttnProcessor(identity_tokens=2)
    only_id = proc(attn, x, ctx, blend=torch.tensor([[1.0, 0.0]] * 3))
    only_style = proc(attn, x, ctx, blend=torch.tensor([[0.0, 1.0]] * 3))
    ref = AttnProcessor2_0()
    torch.testing.assert_close(only_id, ref(attn, x, ctx[:, :2]))
    torch.testing.assert_close(only_style, ref(attn, x, ctx[:, 2:]))
    mixed = proc(attn, x, ctx, blend=torch.tensor([[0.7, 0.4]] * 3))
    bias = attn.to_out[0].bias  # the output projection is affine: weights combine before it
    torch.testing.assert_close(mixed - bias, 0.7 * (only_id - bias) + 0.4 * (only_style - bias))
    w = blend_weights(torch.tensor([0, 500, 1000]), 1000, "timestep", 0.5)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.5], [0.75, 0.75], [0.5, 1.0]]))


def test_prior_samples_reproduce_within_and_between_covariances():
    rng = np.random.default_rng(0)
    p, subjects, per = 3, 600, 6
    a = rng.standard_normal((p, p))
    between = a @ a.T + 0.1 * np.eye(p)
    within = np.diag([0.5, 0.2, 0.0])  # the last parameter never varies within a subject
    mus = rng.multivariate_normal([1.0, -2.0, 0.5], between, subjects)
    x = mus[:, None, :] + rng.multivariate_normal(np.zeros(p), within, (subjects, per))
    labels = np.repeat(np.arange(subjects), per)
    prior = StylePrior.fit(x.reshape(-1, p), labels, ["a", "b", "c"])
    np.testing.assert_allclose(prior.within, within, atol=0.03)
    np.testing.assert_allclose(prior.between, between, atol=0.25 * np.abs(between).max())

    drawn = prior.sample(subjects, per, np.random.default_rng(1))
    refit = StylePrior.fit(drawn.reshape(-1, p), labels, ["a", "b", "c"])
    np.testing.assert_allclose(refit.within, prior.within, atol=0.03)
    np.testing.assert_allclose(refit.between, prior.between, atol=0.2 * np.abs(between).max())
    assert np.ptp(drawn[:, :, 2], axis=1).max() < 1e-9  # fixed within every virtual subject
    # the ablation: same marginal spread, no subjects (between ~ 0, within ~ total)
    flat = prior.sample(subjects, per, np.random.default_rng(2), subject_aware=False)
    agnostic = StylePrior.fit(flat.reshape(-1, p), labels, ["a", "b", "c"])
    total = prior.between + prior.within
    np.testing.assert_allclose(agnostic.within, total, atol=0.2 * np.abs(total).max())
    assert np.abs(agnostic.between).max() < 0.1 * np.abs(prior.between).max()


def test_prior_needs_repeated_subjects():
    with pytest.raises(InputError, match="at least one subject with >= 2 images"):
        StylePrior.fit(np.zeros((3, 2)), [0, 1, 2], ["a", "b"])


def _fit_file(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def test_external_fits_with_a_wrong_shape_are_refused(tmp_path):
    cfg = mf_config(morphface={"style_source": "external", "external": {"fits": str(tmp_path)}})
    src = ExternalStyleSource(cfg.morphface.external)
    assert src.dim == 236  # DECA: 100 + 50 + 6 + 3 + 50 + 27
    good = {
        "shape": np.zeros(100),
        "exp": np.zeros(50),
        "pose": np.zeros(6),
        "cam": np.zeros(3),
        "tex": np.zeros(50),
        "light": np.zeros((9, 3)),
    }
    _fit_file(tmp_path / "00000001" / "0000.npz", **good)
    row = src.sample_params({"__key__": "00000001/0000"})
    assert row.shape == (236,)
    _fit_file(tmp_path / "00000001" / "0001.npz", **{**good, "exp": np.zeros(48)})
    with pytest.raises(InputError, match=r"0001\.npz: array 'exp' has shape \(48,\).*expected 50"):
        src.sample_params({"__key__": "00000001/0001"})
    _fit_file(tmp_path / "00000001" / "0002.npz", **{k: v for k, v in good.items() if k != "tex"})
    with pytest.raises(InputError, match="no array 'tex'"):
        src.sample_params({"__key__": "00000001/0002"})
    with pytest.raises(InputError, match="no such file"):
        src.sample_params({"__key__": "00000001/0009"})
    with pytest.raises(InputError, match="outside"):
        src.sample_params({"__key__": "../escape"})
    maps = tmp_path / "bad_maps.npz"
    np.savez(maps, normal=np.zeros((8, 8, 3)), albedo=np.zeros((8, 8)), shading=np.zeros((8, 8, 3)))
    with pytest.raises(InputError, match=r"map 'albedo' must have shape \(H, W, 3\)"):
        src.read_maps(maps)
    with pytest.raises(ConfigError, match="renderer"):
        src.render(np.zeros((1, 236)), 32)


def test_checkpoint_round_trip_keeps_the_prior(world_prior, tmp_path):
    gen = _generator(world_prior)
    gen.save_pretrained(tmp_path / "g")
    back = load_generator(tmp_path / "g")
    assert type(back).__name__ == "MorphFaceGenerator"
    for key in ("mean", "between", "within", "low", "high"):
        np.testing.assert_array_equal(getattr(back.style_prior, key), getattr(world_prior, key))
    assert back.style_prior.names == world_prior.names
    anchors = np.random.default_rng(0).standard_normal((2, ID_DIM)).astype(np.float32)
    a = gen.dataset_conditions(anchors, 2, seed=4)
    b = back.dataset_conditions(anchors, 2, seed=4)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    ident, attrs = a["identity"].reshape(4, -1), a["attributes"].reshape(4, -1)
    seeds = a["seeds"].reshape(-1).tolist()
    np.testing.assert_array_equal(
        gen.generate(ident, attrs, seeds), back.generate(ident, attrs, seeds)
    )


def test_per_seed_determinism(world_prior):
    gen = _generator(world_prior)
    anchors = np.random.default_rng(1).standard_normal((3, ID_DIM)).astype(np.float32)
    whole = gen.dataset_conditions(anchors, 3, seed=7)
    part = gen.dataset_conditions(anchors[1:], 3, seed=7, first_identity=1)
    for key in whole:  # any shard of identities can be produced alone
        np.testing.assert_array_equal(whole[key][1:], part[key])
    style = whole["attributes"]
    src = gen.style_source
    shape = src.groups["shape"]
    assert np.ptp(style[:, :, shape], axis=1).max() < 1e-4  # a subject keeps its face shape
    assert np.ptp(style[:, :, src.param_names.index("yaw")], axis=1).min() > 1.0  # pose varies
    assert (style[:, :, src.param_names.index("group")] % 1 == 0).all()  # categorical rounded
    ident, attrs = whole["identity"].reshape(9, -1), style.reshape(9, -1)
    seeds = whole["seeds"].reshape(-1).tolist()
    full = gen.generate(ident, attrs, seeds, batch_size=9, return_float=True)
    split = gen.generate(ident, attrs, seeds, batch_size=4, return_float=True)
    alone = gen.generate(ident[5:6], attrs[5:6], seeds[5:6], return_float=True)
    np.testing.assert_allclose(full, split, atol=5e-4)
    np.testing.assert_allclose(full[5], alone[0], atol=5e-4)
    other = gen.generate(ident[5:6], attrs[5:6], [12345], return_float=True)
    assert np.abs(other[0] - full[5]).mean() > 1e-2
    agnostic = gen.dataset_conditions(anchors, 3, seed=7, subject_aware=False)["attributes"]
    assert np.ptp(agnostic[:, :, shape], axis=1).max() > 1e-3  # the ablation has no subjects


def test_training_fits_the_prior_and_resumes_exactly(tmp_path):
    samples = world_samples(identities=4, per_identity=3)
    cfg = mf_config(tmp_path)
    enc = tiny_encoder()
    first = train_generator(cfg, data=samples, encoder=enc, steps=2)
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    assert (ckpt / "style_prior.json").is_file()
    resumed = train_generator(cfg, data=samples, encoder=enc)
    straight = train_generator(
        cfg.model_copy(
            update={"train": cfg.train.model_copy(update={"output_dir": str(tmp_path / "b")})}
        ),
        data=samples,
        encoder=enc,
    )
    assert [h["loss"] for h in first["history"] + resumed["history"]] == [
        h["loss"] for h in straight["history"]
    ]
    gen = load_generator(resumed["final"])
    assert gen.style_prior.subjects == 4 and gen.style_prior.images == 12
    expected = fit_style_prior(cfg, samples)
    np.testing.assert_array_equal(gen.style_prior.within, expected.within)


def test_config_errors():
    with pytest.raises(ConfigError, match=r"conditioning\.attributes must be"):
        create_generator("morphface", tiny_config(generator="morphface"))
    with pytest.raises(ConfigError, match="hflip"):
        create_generator("morphface", mf_config(data={"hflip": True}))
    gen = create_generator("morphface", mf_config())
    with pytest.raises(ConfigError, match="no style prior"):
        gen.dataset_conditions(np.ones((1, ID_DIM), np.float32), 1)
    with pytest.raises(InputError, match="style maps must have shape"):
        gen.generate(np.ones((1, ID_DIM)), np.zeros((1, 9, 16, 16)), [0])


def test_new_identities_keep_their_margins():
    rng = np.random.default_rng(0)
    training = rng.standard_normal((20, 32))
    cands = np.concatenate(
        [training[:5] + 0.01 * rng.standard_normal((5, 32)), rng.standard_normal((200, 32))]
    )
    filt = MarginFilter(0.3, training, 0.5)
    filt.offer(cands, 10)
    kept = filt.kept
    assert len(kept) == 10 and filt.rejected_near_training >= 5
    t = training / np.linalg.norm(training, axis=1, keepdims=True)
    assert (kept @ t.T).max() <= 0.5
    s = kept @ kept.T
    np.fill_diagonal(s, -1)
    assert s.max() <= 0.3


def toy_renderer(groups: dict, size: int) -> dict:
    """A stand-in for a user's fitter renderer (referenced as module:function by config)."""
    n = len(groups["shape"])
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    ramp = np.broadcast_to(grid[None, None, :, None], (n, size, size, 1))
    shape = np.tanh(groups["shape"][:, None, None, :3]).astype(np.float32)
    light = 1 / (1 + np.exp(-groups["lighting"][:, None, None, :3])).astype(np.float32)
    return {
        "normal": np.broadcast_to(shape, (n, size, size, 3)) * ramp,
        "albedo": np.broadcast_to(light, (n, size, size, 3)).copy(),
        "shading": np.broadcast_to(
            np.abs(groups["expression"][:, None, None, :1]), (n, size, size, 3)
        ),
    }


def test_external_fits_train_and_sample_with_the_users_renderer(tmp_path):
    from tests.generators_helpers import toy_samples

    layout = [
        {"name": "shape", "key": "shape", "size": 4},
        {"name": "expression", "key": "exp", "size": 2},
        {"name": "lighting", "key": "light", "size": 3},
    ]
    samples = toy_samples(identities=3, per_identity=3)
    for s in samples:
        rng = np.random.default_rng(list(map(int, s["__key__"].split("/"))))
        shape = np.random.default_rng(s["label"]).standard_normal(4)  # fixed per subject
        fit = {"shape": shape, "exp": rng.standard_normal(2), "light": rng.standard_normal(3)}
        _fit_file(tmp_path / "fits" / f"{s['__key__']}.npz", **fit)
        maps = toy_renderer(
            {"shape": shape[None], "expression": fit["exp"][None], "lighting": fit["light"][None]},
            24,  # maps of another size are resized to morphface.map_size
        )
        _fit_file(tmp_path / "maps" / f"{s['__key__']}.npz", **{k: v[0] for k, v in maps.items()})
    external = {
        "fits": str(tmp_path / "fits"),
        "maps": str(tmp_path / "maps"),
        "renderer": "tests.test_generators_morphface:toy_renderer",
        "layout": layout,
    }
    cfg = mf_config(
        tmp_path,
        morphface={"style_source": "external", "map_size": 16, "external": external},
        train={"steps": 2, "checkpoint_every": 2},
    )
    out = train_generator(cfg, data=samples, encoder=tiny_encoder())
    gen = load_generator(out["final"])
    prior = gen.style_prior
    assert prior.dim == 9 and prior.subjects == 3
    assert np.abs(prior.within[:4, :4]).max() < 1e-9  # shape never varies within a subject
    cond = gen.dataset_conditions(np.eye(2, ID_DIM, dtype=np.float32), 2, seed=0)
    images = gen.generate(
        cond["identity"].reshape(4, -1), cond["attributes"].reshape(4, -1), [1, 2, 3, 4]
    )
    assert images.shape == (4, 16, 16, 3)


def test_cli_identities_then_sample_writes_styles_into_meta(world_prior, tmp_path, capsys):
    import json

    from synthface.pipeline.cli import main
    from synthface.pipeline.shards import iter_samples
    from synthface.recognition import create_backbone, save_recognizer

    torch.manual_seed(0)
    gen = create_generator("morphface", mf_config(sampler={"steps": 2}), style_prior=world_prior)
    ckpt = gen.save_pretrained(tmp_path / "g")
    rec = save_recognizer(
        create_backbone("tiny", input_size=16, embedding_dim=ID_DIM), tmp_path / "rec", {}
    )
    training = np.random.default_rng(0).standard_normal((5, ID_DIM)).astype(np.float32)
    np.save(tmp_path / "train.npy", training)
    ids = tmp_path / "ids.npy"
    args = [
        "generator",
        "identities",
        str(ckpt),
        "--n",
        "3",
        "--out",
        str(ids),
        "--encoder",
        str(rec),
        "--training",
        str(tmp_path / "train.npy"),
        "--max-cos",
        "0.999",
        "--max-cos-training",
        "0.999",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--json",
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["identities"] == 3 and np.load(ids).shape == (3, ID_DIM)
    assert main([*args[:-1], "--max-cos", "-1.0", "--max-candidates", "4"]) != 0
    assert "loosen a margin" in capsys.readouterr().err

    out = tmp_path / "ds"
    assert (
        main(
            [
                "generator",
                "sample",
                str(ckpt),
                "--identities",
                "3",
                "--per-identity",
                "2",
                "--out",
                str(out),
                "--anchors",
                str(ids),
                "--qc-recognizer",
                str(rec),
                "--steps",
                "2",
                "--no-report",
                "--json",
            ]
        )
        == 0
    )
    metas = [s["meta"] for s in iter_samples(out, decode=False)]
    assert len(metas) == 6 and {m["generator"] for m in metas} == {"morphface"}
    assert set(metas[0]["attributes"]) == set(gen.style_source.param_names)
    yaws = [m["attributes"]["yaw"] for m in metas[:2]]
    assert yaws[0] != yaws[1]  # each image its own pose
    assert metas[0]["attributes"]["head_w"] == metas[1]["attributes"]["head_w"]  # one subject


@pytest.mark.parametrize("blending", ["timestep", "none"])
def test_denoiser_runs_under_bf16_autocast(blending):
    from synthface.generators.morphface.model import MorphFaceDenoiser

    torch.manual_seed(0)
    model = MorphFaceDenoiser(mf_config(morphface={"blending": blending}))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    maps, ident = torch.rand(2, 9, 32, 32), torch.randn(2, ID_DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eps = model(x, t, identity=ident, attributes=maps, drop=torch.tensor([False, True]))
    assert eps.shape == x.shape and torch.isfinite(eps.float()).all()
    eps.float().mean().backward()
    assert model.cond.style.proj.weight.grad is not None  # the style encoder is trained
