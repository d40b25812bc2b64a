"""UIFace: empty-context training, two-stage sampling, attention injection, weight import."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthface.generators.base import create_generator, load_generator
from synthface.generators.sampling import sample
from synthface.pipeline.errors import ConfigError, InputError
from tests.generators_helpers import ID_DIM, tiny_config, toy_samples

torch.set_num_threads(1)

TINY_UNET = {
    "base_channels": 8,
    "channel_mult": [1, 2],
    "attention_levels": [True, True],
    "num_res_blocks": 1,
    "head_channels": 8,
    "context_dim": 16,
    "context_tokens": 8,  # = head_channels, as in the reference
    "norm_num_groups": 4,
}


def uiface_config(tmp_path: Path | None = None, **overrides):
    over = {
        "generator": "uiface",
        "conditioning": {"attributes": [], "p_uncond": 0.5},
        "uiface": {"unet": TINY_UNET, "switch_bound": 400},
        "sampler": {"name": "ddim", "steps": 8, "batch_size": 4, "guidance_scale": 2.0},
    }
    for key, value in overrides.items():
        over[key] = {**over.get(key, {}), **value} if isinstance(value, dict) else value
    return tiny_config(tmp_path, **over)


def _generator(seed: int = 0, **overrides):
    """A tiny uiface generator whose zero-initialised output layers are made non-zero."""
    torch.manual_seed(seed)
    gen = create_generator("uiface", uiface_config(**overrides))
    with torch.no_grad():
        for p in gen.denoiser.parameters():
            if p.ndim > 1:
                p.normal_(0.0, 0.3)
    return gen


def _ident(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, ID_DIM)).astype(np.float32)


# --------------------------------------------------------------------------- training
def test_empty_context_is_a_trained_parameter_and_context_dropout_masks_elements(tmp_path):
    from synthface.generators.checkpoint import load_tensors
    from synthface.generators.training import train_generator
    from synthface.generators.uiface.denoiser import UIFaceDenoiser

    cfg = uiface_config(
        tmp_path, train={"steps": 4, "checkpoint_every": 4}, data={"use_cached_embeddings": True}
    )
    torch.manual_seed(cfg.train.seed)  # the training loop builds its model after this seed
    initial = UIFaceDenoiser(cfg).unet.empty_context.detach().clone()
    data = toy_samples()
    for s in data:
        s["embedding"] = np.random.default_rng(s["label"]).standard_normal(ID_DIM)
    train_generator(cfg, data=data)
    # zero-initialised output layers (conv_out, then proj_out) pass gradient back to the
    # context only from the third step on
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000004"
    raw = load_tensors(ckpt / "training" / "raw.safetensors")
    trained = raw["unet.empty_context"]
    assert trained.shape == initial.shape
    assert not torch.allclose(trained, initial)
    # element-wise dropout: ~25 % of context entries, kept ones scaled by 1 / 0.75
    den = UIFaceDenoiser(cfg)
    extras = den.training_extras(64, torch.Generator().manual_seed(0))
    keep = extras["context_keep"]
    assert keep.shape == (64, TINY_UNET["context_dim"])
    assert 0.2 < 1 - keep.float().mean() < 0.3
    ident = torch.randn(64, ID_DIM)
    plain = den.context(ident)
    dropped = den.context(ident, context_keep=keep)
    torch.testing.assert_close(dropped[keep], plain[keep] / 0.75)
    assert (dropped[~keep] == 0).all()


# --------------------------------------------------------------------------- sampling
SEEDS = [11, 12, 13, 14, 15, 16]
STAGE1 = (875, 750, 625, 500)  # DDIM-8 timesteps >= switch_bound 400; then 375, 250, ...


def _switch_times(gen, ident, seeds, threshold):
    meta: list[dict] = []
    gen.generate(
        ident, None, seeds, sampler_options={"switch_threshold": threshold}, sample_meta=meta
    )
    return [m["uiface"] for m in meta]


@pytest.fixture(scope="module")
def sampled():
    """The generator, its conditions and a threshold that splits the samples' decisions."""
    from synthface.generators.uiface.sampling import sample_two_stage

    gen = _generator()
    ident = _ident(len(SEEDS))
    trace: list = []
    context = gen.denoiser.cond(torch.from_numpy(ident))
    sample_two_stage(
        gen.denoiser,
        context,
        SEEDS,
        sampler=gen.config.sampler,
        diffusion=gen.config.diffusion,
        options=gen.config.uiface.model_copy(update={"switch_threshold": 0.0}),
        shape=(3, 16, 16),
        trace=trace,
    )
    assert [t for t, _ in trace] == [750, 625, 500]  # comparisons need a previous map
    first = np.sort(trace[0][1].numpy())  # per-sample map change at the first comparison
    gap = int(np.argmax(np.diff(first)))
    mixed = float(first[gap] + first[gap + 1]) / 2  # far from every sample's value
    return gen, ident, mixed


def test_switch_happens_per_sample_and_only_above_the_bound(sampled):
    gen, ident, mixed = sampled
    never = _switch_times(gen, ident, SEEDS, 0.0)
    assert all(m == {"switch_timestep": 375, "adaptive": False} for m in never)
    always = _switch_times(gen, ident, SEEDS, 1e9)
    assert all(m == {"switch_timestep": 625, "adaptive": True} for m in always)
    split = _switch_times(gen, ident, SEEDS, mixed)
    assert len({m["switch_timestep"] for m in split}) > 1  # each sample decides for itself
    for m in split:
        assert m["switch_timestep"] in (625, 500, 375)  # 875: no previous map yet
        assert m["adaptive"] == (m["switch_timestep"] >= 400)  # never below the bound
    # alone, a sample switches when it did in the batch
    for i in (0, len(SEEDS) - 1):
        assert _switch_times(gen, ident[i : i + 1], SEEDS[i : i + 1], mixed) == split[i : i + 1]


def test_sampling_per_seed_does_not_depend_on_batch_size(sampled):
    gen, ident, mixed = sampled
    opts = {"switch_threshold": mixed}
    outs, metas = [], []
    for bs in (6, 4, 1):
        meta: list[dict] = []
        outs.append(
            gen.generate(
                ident,
                None,
                SEEDS,
                batch_size=bs,
                return_float=True,
                sampler_options=opts,
                sample_meta=meta,
            )
        )
        metas.append(meta)
    assert metas[0] == metas[1] == metas[2]
    assert np.abs(outs[0] - outs[1]).max() < 5e-4
    assert np.abs(outs[0] - outs[2]).max() < 5e-4


def test_batched_passes_equal_the_reference_separate_passes(sampled):
    gen, ident, mixed = sampled
    opts = {"switch_threshold": mixed}
    m_b: list[dict] = []
    m_s: list[dict] = []
    batched = gen.generate(
        ident, None, SEEDS, return_float=True, sampler_options=opts, sample_meta=m_b
    )
    separate = gen.generate(
        ident,
        None,
        SEEDS,
        return_float=True,
        sampler_options=opts,
        sample_meta=m_s,
        batched_cfg=False,
    )
    assert m_b == m_s
    assert np.abs(batched - separate).max() < 5e-4


def test_injection_changes_the_output_and_off_is_plain_cfg(sampled):
    gen, ident, _ = sampled
    one_stage = {"two_stage": False}
    off = gen.generate(
        ident,
        None,
        SEEDS,
        return_float=True,
        batch_size=len(SEEDS),  # one batch, as the core sampler below
        sampler_options={**one_stage, "injection": False},
    )
    tokens = gen.denoiser.cond(torch.from_numpy(ident))
    plain = sample(
        gen.denoiser,
        tokens,
        SEEDS,
        sampler=gen.config.sampler,
        diffusion=gen.config.diffusion,
        shape=(3, 16, 16),
        clip_x0=True,
    )
    np.testing.assert_array_equal(off, plain.clamp(-1, 1).numpy())
    on = gen.generate(
        ident, None, SEEDS, return_float=True, sampler_options={**one_stage, "injection": True}
    )
    assert np.abs(on - off).mean() > 0.05
    two_on = gen.generate(ident, None, SEEDS, return_float=True)
    two_off = gen.generate(
        ident, None, SEEDS, return_float=True, sampler_options={"injection": False}
    )
    assert np.abs(two_on - two_off).mean() > 0.05


def test_sampler_options_are_checked():
    gen = _generator()
    with pytest.raises(InputError, match="'two_stages' is unknown"):
        gen.generate(_ident(1), None, [0], sampler_options={"two_stages": False})
    with pytest.raises(InputError, match="switch_bound"):
        gen.generate(_ident(1), None, [0], sampler_options={"switch_bound": -1})
    plain = create_generator("plain", tiny_config())
    with pytest.raises(InputError, match="takes no sampler options"):
        plain.generate(_ident(1), np.zeros((1, 1), "f4"), [0], sampler_options={"x": 1})
    with pytest.raises(ConfigError, match=r"conditioning\.attributes"):
        create_generator("uiface", tiny_config(uiface={"unet": TINY_UNET}))


# --------------------------------------------------------------------------- weight import
# The reference's tensor names and shapes, written here from the description of its code
# (``ConditionalUNet``: flat ``down``/``up`` lists of res(+attn) blocks and resamplers;
# LDM ``Encoder``/``Decoder``), independently of the converter's own name mapping.
def reference_unet_shapes(u: dict, in_ch: int = 3, id_dim: int = ID_DIM) -> dict:
    shapes: dict[str, tuple] = {}
    base, hc, ctx = u["base_channels"], u["head_channels"], u["context_dim"]
    tc = 4 * base

    def add(name, *shape, bias=True):
        shapes[name + ".weight"] = shape
        if bias:
            shapes[name + ".bias"] = (shape[0],)

    def res(p, i, o):
        add(p + ".norm1", i)
        add(p + ".conv1", o, i, 3, 3)
        add(p + ".time_emb.1", o, tc)
        add(p + ".scale_emb", o, o)
        add(p + ".shift_emb", o, o)
        add(p + ".norm2.norm", o)
        add(p + ".conv2", o, o, 3, 3)
        if i != o:
            add(p + ".shortcut", o, i, 1, 1)

    def attn(p, c):
        add(p + ".x_proj_in", c, c, 1, 1)
        add(p + ".x_proj_out", c, c, 1, 1)
        for name, kv in (("self_attention", c), ("cross_attention", ctx)):
            add(f"{p}.{name}.to_q", c, c, 1)
            add(f"{p}.{name}.to_k", c, kv, 1)
            add(f"{p}.{name}.to_v", c, kv, 1)
            add(f"{p}.{name}.proj_out", c, c, 1)
        add(p + ".c_proj_in", ctx * hc, ctx)  # 32 tokens = head_channels in the reference
        add(p + ".x_norm", c)
        add(p + ".c_norm", ctx)
        add(p + ".ff.0", 4 * c, c)
        add(p + ".ff.2", c, 4 * c)

    add("image_proj", base, in_ch, 3, 3)
    add("time_emb.lin1", tc, base)
    add("time_emb.lin2", tc, tc)
    add("context_emb", ctx, id_dim)
    shapes["empty_context_embedding"] = (ctx,)
    mult, flags, nb = u["channel_mult"], u["attention_levels"], u["num_res_blocks"]
    k, cin = 0, base
    for i, m in enumerate(mult):
        cout = cin * m
        for _ in range(nb):
            res(f"down.{k}.res", cin, cout)
            if flags[i]:
                attn(f"down.{k}.attn", cout)
            k, cin = k + 1, cout
        if i < len(mult) - 1:
            add(f"down.{k}.conv", cin, cin, 3, 3)
            k += 1
    res("middle.res1", cin, cin)
    attn("middle.attn", cin)
    res("middle.res2", cin, cin)
    k = 0
    for i in reversed(range(len(mult))):
        for _ in range(nb):
            res(f"up.{k}.res", 2 * cin, cin)
            if flags[i]:
                attn(f"up.{k}.attn", cin)
            k += 1
        cout = cin // mult[i]
        res(f"up.{k}.res", cin + cout, cout)
        if flags[i]:
            attn(f"up.{k}.attn", cout)
        k, cin = k + 1, cout
        if i > 0:
            add(f"up.{k}.conv", cin, cin, 4, 4)  # ConvTranspose2d: (in, out, 4, 4)
            k += 1
    add("norm", base)
    add("final", in_ch, base, 3, 3)
    return shapes


def reference_vq_shapes(ch: int, mult=(1, 2, 4), nb: int = 2, z: int = 3, n_embed: int = 8192):
    enc: dict[str, tuple] = {}
    dec: dict[str, tuple] = {}

    def add(d, name, *shape):
        d[name + ".weight"] = shape
        d[name + ".bias"] = (shape[0],)

    def block(d, p, i, o):
        add(d, p + ".norm1", i)
        add(d, p + ".conv1", o, i, 3, 3)
        add(d, p + ".norm2", o)
        add(d, p + ".conv2", o, o, 3, 3)
        if i != o:
            add(d, p + ".nin_shortcut", o, i, 1, 1)

    def mid(d, p, c):
        block(d, p + ".mid.block_1", c, c)
        add(d, p + ".mid.attn_1.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            add(d, f"{p}.mid.attn_1.{n}", c, c, 1, 1)
        block(d, p + ".mid.block_2", c, c)

    add(enc, "encoder.conv_in", ch, 3, 3, 3)
    cin = ch
    for i, m in enumerate(mult):
        for j in range(nb):
            block(enc, f"encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
        if i < len(mult) - 1:
            add(enc, f"encoder.down.{i}.downsample.conv", cin, cin, 3, 3)
    mid(enc, "encoder", cin)
    add(enc, "encoder.norm_out", cin)
    add(enc, "encoder.conv_out", z, cin, 3, 3)
    add(enc, "quant_conv", z, z, 1, 1)
    add(dec, "decoder.conv_in", cin, z, 3, 3)
    mid(dec, "decoder", cin)
    for i in reversed(range(len(mult))):
        for j in range(nb + 1):
            block(dec, f"decoder.up.{i}.block.{j}", cin, ch * mult[i])
            cin = ch * mult[i]
        if i > 0:
            add(dec, f"decoder.up.{i}.upsample.conv", cin, cin, 3, 3)
    add(dec, "decoder.norm_out", cin)
    add(dec, "decoder.conv_out", 3, cin, 3, 3)
    dec["quantize.embedding.weight"] = (n_embed, z)
    add(dec, "post_quant_conv", z, z, 1, 1)
    return enc, dec


def _tensors(shapes: dict, seed: int, device: str = "cpu") -> dict:
    g = torch.Generator().manual_seed(seed)
    if device == "meta":
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    return {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}


def _ema_file(shapes: dict, seed: int = 0) -> dict:
    from synthface.generators.uiface.convert import SCHEDULE_BUFFERS

    state = {f"module.eps_model.{k}": v for k, v in _tensors(shapes, seed).items()}
    betas = torch.linspace(1e-4, 0.02, 1000)
    for name in SCHEDULE_BUFFERS:
        state[f"module.{name}"] = betas if name == "betas" else torch.rand(1000)
    return state


TINY_VQ = 32  # the LDM VQ uses GroupNorm(32): 32 is the smallest width


def _import_config(tmp_path: Path):
    return uiface_config(
        image_size=16,
        autoencoder={"kind": "vq", "latent_channels": 3, "block_out_channels": [32, 64, 128]},
        sampler={"steps": 3, "batch_size": 2},
    )


@pytest.fixture
def released(tmp_path):
    """Tiny stand-ins for the three released files, with the reference's names and shapes."""
    unet = _ema_file(reference_unet_shapes(TINY_UNET))
    enc_shapes, dec_shapes = reference_vq_shapes(TINY_VQ)
    files = {
        "unet": (unet, tmp_path / "ema_averaged_model_250000.ckpt"),
        "enc": (_tensors(enc_shapes, 1), tmp_path / "first_stage_encoder_state_dict.pt"),
        "dec": (_tensors(dec_shapes, 2), tmp_path / "first_stage_decoder_state_dict.pt"),
    }
    for state, path in files.values():
        torch.save(state, path)
    return files


def _import(files, out, config):
    from synthface.generators.uiface.convert import import_uiface

    return import_uiface(files["unet"][1], files["enc"][1], files["dec"][1], out, config)


def test_import_loads_every_tensor_exactly_and_round_trips(released, tmp_path):
    info = _import(released, tmp_path / "gen", _import_config(tmp_path))
    assert info["layout"] == "ema" and info["schedule_checked"]
    gen = load_generator(tmp_path / "gen")
    own = gen.denoiser.unet.state_dict()
    ref = released["unet"][0]
    assert info["unet_parameters"] == sum(
        np.prod(s) for s in reference_unet_shapes(TINY_UNET).values()
    )
    pairs = {
        "down_blocks.1.attentions.0.attn1.to_q.weight": "down.2.attn.self_attention.to_q.weight",
        "up_blocks.0.resnets.1.scale_proj.weight": "up.1.res.scale_emb.weight",
        "up_blocks.0.upsampler.weight": "up.2.conv.weight",
        "mid_block.attentions.0.context_proj.bias": "middle.attn.c_proj_in.bias",
        "empty_context": "empty_context_embedding",
    }
    for ours, theirs in pairs.items():
        expected = ref[f"module.eps_model.{theirs}"]
        torch.testing.assert_close(own[ours], expected.reshape(own[ours].shape), rtol=0, atol=0)
    vq = gen.autoencoder.model.state_dict()
    enc, dec = released["enc"][0], released["dec"][0]
    torch.testing.assert_close(
        vq["encoder.mid_block.attentions.0.to_k.weight"],
        enc["encoder.mid.attn_1.k.weight"][..., 0, 0],
    )
    torch.testing.assert_close(
        vq["decoder.up_blocks.0.resnets.2.conv1.weight"], dec["decoder.up.2.block.2.conv1.weight"]
    )
    images = gen.generate(_ident(2), None, [0, 1])
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8


@pytest.mark.parametrize("which", ["unet", "enc", "dec"])
@pytest.mark.parametrize("damage", ["rename", "reshape"])
def test_import_refuses_one_renamed_or_reshaped_tensor_by_name(released, tmp_path, which, damage):
    state, path = released[which]
    key = {
        "unet": "module.eps_model.up.1.attn.cross_attention.to_k.weight",
        "enc": "encoder.down.1.block.0.nin_shortcut.weight",
        "dec": "decoder.up.0.block.2.conv2.bias",
    }[which]
    state = dict(state)
    if damage == "rename":
        state[key.replace(".weight", ".weights").replace(".bias", ".biases")] = state.pop(key)
    else:
        state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    torch.save(state, path)
    with pytest.raises(InputError) as err:
        _import(released, tmp_path / "gen", _import_config(tmp_path))
    assert key in str(err.value) and str(path) in str(err.value)
    assert not (tmp_path / "gen").exists()


def test_non_ema_layout_is_converted_fully_or_refused(released, tmp_path):
    from synthface.generators.uiface.convert import split_unet_file

    ema = released["unet"][0]
    # a wrapper state dict holding the same UNet twice (forward module and original module)
    wrapped = {}
    for k, v in ema.items():
        wrapped["_forward_module." + k] = v
        wrapped[k.replace("module.", "_original_module.", 1)] = v
    unet, buffers, prefix = split_unet_file(wrapped, "model_250000.ckpt")
    assert prefix == "_forward_module.module.eps_model." and len(buffers) == 8
    assert unet.keys() == {k[len("module.eps_model.") :] for k in ema if "eps_model" in k}
    different = dict(wrapped)
    key = "_original_module.eps_model.final.bias"
    different[key] = different[key] + 1
    with pytest.raises(InputError, match="two different UNets"):
        split_unet_file(different, "model_250000.ckpt")
    extra = {**ema, "module.optimizer_step": torch.zeros(1)}
    with pytest.raises(InputError, match=r"module\.optimizer_step"):
        split_unet_file(extra, "x.ckpt")
    wrong = {**ema, "module.betas": torch.linspace(1e-4, 0.03, 1000)}
    torch.save(wrong, released["unet"][1])
    with pytest.raises(InputError, match="not the config's linear schedule"):
        _import(released, tmp_path / "gen", _import_config(tmp_path))


class _Payload:
    """Unpickling this would create ``marker``: the file a malicious checkpoint could be."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_import_never_unpickles_code(released, tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"module.eps_model.image_proj.weight": _Payload(marker)}, released["unet"][1])
    with pytest.raises(InputError, match="weights-only"):
        _import(released, tmp_path / "gen", _import_config(tmp_path))
    assert not marker.exists()


def test_released_size_matches_the_reference_shapes_on_meta_tensors():
    from synthface.generators.config import UIFaceUNetConfig
    from synthface.generators.uiface.convert import convert_unet
    from synthface.generators.uiface.unet import UIFaceUNet

    u = UIFaceUNetConfig().model_dump()
    shapes = reference_unet_shapes(u, id_dim=512)
    # the reference's config comment: 216,341,187 parameters, + the learnable empty context
    assert sum(int(np.prod(s)) for s in shapes.values()) == 216_341_187 + 256
    with torch.device("meta"):
        unet = UIFaceUNet()
    converted = convert_unet(_tensors(shapes, 0, "meta"), unet, "meta")
    assert converted.keys() == unet.state_dict().keys()


def test_cli_import_uiface(released, tmp_path, capsys):
    import yaml

    from synthface.pipeline.cli import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(_import_config(tmp_path).model_dump(mode="json")))
    args = [
        "generator",
        "import-uiface",
        "--unet",
        str(released["unet"][1]),
        "--vq-encoder",
        str(released["enc"][1]),
        "--vq-decoder",
        str(released["dec"][1]),
        "--out",
        str(tmp_path / "gen"),
        "--config",
        str(cfg),
        "--json",
    ]
    assert main(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "ema"
    assert (
        json.loads((tmp_path / "gen" / "config.json").read_text())["config"]["generator"]
        == "uiface"
    )
    args[args.index("--unet") + 1] = str(tmp_path / "missing.ckpt")
    assert main(args) == 1
    assert "--unet" in capsys.readouterr().err


# --------------------------------------------------------------------------- configs, datasets
@pytest.mark.parametrize("name", ["uiface_world.yaml", "uiface_128.yaml"])
def test_shipped_uiface_configs_validate(name):
    from synthface.generators.config import GeneratorConfig
    from synthface.generators.uiface.denoiser import build_uiface_unet
    from synthface.pipeline.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "generators" / name, GeneratorConfig)
    assert cfg.generator == "uiface" and cfg.conditioning.attributes == []
    if name == "uiface_128.yaml":
        assert (cfg.sample_channels, cfg.sample_size) == (3, 32)
        with torch.device("meta"):
            unet = build_uiface_unet(cfg)
        assert sum(p.numel() for p in unet.parameters()) == 216_341_187 + 256


def test_dataset_samples_record_their_switch_and_bad_options_fail_first(tmp_path):
    from synthface.generators.dataset import generate_dataset
    from synthface.generators.dataset.config import GenerateConfig
    from synthface.pipeline.shards import iter_samples
    from synthface.recognition import create_backbone, save_recognizer

    ckpt = _generator().save_pretrained(tmp_path / "g")
    rec = save_recognizer(
        create_backbone("tiny", input_size=16, embedding_dim=8), tmp_path / "r", {}
    )

    def config(out, **options):
        return GenerateConfig.model_validate(
            {
                "generator": {"checkpoint": str(ckpt), "batch_size": 4, "sampler_options": options},
                "identities": {"count": 2, "samples_per_identity": 2, "anchor_iterations": 2},
                "output": {"dir": str(out), "image_format": "png"},
                "qc": {"recognizer": str(rec)},
                "report": {"enabled": False},
            }
        )

    with pytest.raises(ConfigError, match=r"generator\.sampler_options: .*'threshold' is unknown"):
        generate_dataset(config(tmp_path / "bad", threshold=0.1))
    assert not (tmp_path / "bad").exists()
    generate_dataset(config(tmp_path / "ds", switch_threshold=1e9))
    metas = [s["meta"] for s in iter_samples(tmp_path / "ds")]
    assert len(metas) == 4
    assert all(m["uiface"] == {"switch_timestep": 625, "adaptive": True} for m in metas)
    assert all(m["generator"] == "uiface" and m["condition_cos"] == 1.0 for m in metas)


# --------------------------------------------------------------------------- released weights to a dataset
# The documented path end to end: the import exactly as docs/generators.md prints it
# (the shipped full-width default config, shrunk only in width so that tiny files in the
# released layout fit it), then a dataset from the user's contexts without any encoder.
RELEASED_NAMES = {
    "unet": "ema_averaged_model_250000.ckpt",
    "enc": "first_stage_encoder_state_dict.pt",
    "dec": "first_stage_decoder_state_dict.pt",
}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "generators.md"


def _documented_commands(heading: str, first_word: str) -> list[list[str]]:
    """Command lines of the ```sh blocks under ``heading`` (``[...]`` optional parts dropped)."""
    import re
    import shlex

    text = DOCS.read_text().split(heading, 1)[1].split("\n#", 1)[0]
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\[[^\]]*\]", "", line).split("#", 1)[0].strip()
            if line.startswith("synthface " + first_word):
                out.append(shlex.split(line)[1:])
    return out


def _shrunk_default(monkeypatch):
    """The shipped uiface_128.yaml read by the real loader, with test widths."""
    from synthface.generators.config import UIFaceUNetConfig
    from synthface.generators.uiface import convert

    real = convert.default_import_config

    def shrunk():
        cfg = real()
        assert cfg.image_size == 128 and cfg.conditioning.identity_dim == 512
        cfg.uiface.unet = UIFaceUNetConfig(**TINY_UNET)
        cfg.autoencoder.block_out_channels = [TINY_VQ, 2 * TINY_VQ, 4 * TINY_VQ]
        return cfg

    monkeypatch.setattr(convert, "default_import_config", shrunk)


def _write_released(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    enc_shapes, dec_shapes = reference_vq_shapes(TINY_VQ)
    states = {
        "unet": _ema_file(reference_unet_shapes(TINY_UNET, id_dim=512)),
        "enc": _tensors(enc_shapes, 1),
        "dec": _tensors(dec_shapes, 2),
    }
    paths = {}
    for key, state in states.items():
        paths[key] = folder / RELEASED_NAMES[key]
        torch.save(state, paths[key])
    return paths


def _recognizer(path: Path, dim: int, seed: int = 0) -> Path:
    from synthface.recognition import create_backbone, save_recognizer

    torch.manual_seed(seed)
    return save_recognizer(create_backbone("tiny", input_size=16, embedding_dim=dim), path, {})


def _contexts(path: Path, rows: int = 3, space: str | None = "elasticface") -> Path:
    from synthface.pipeline.embedding_space import write_anchor_space

    np.save(path, np.random.default_rng(5).standard_normal((rows, 512)).astype(np.float32))
    if space is not None:
        write_anchor_space(path, space)
    return path


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A tiny model imported by the documented command (default config, default space)."""
    from synthface.pipeline.cli import main

    root = tmp_path_factory.mktemp("released")
    files = _write_released(root)
    with pytest.MonkeyPatch.context() as mp:
        _shrunk_default(mp)
        mp.chdir(root)
        [argv] = _documented_commands("### Importing the released weights", "generator")
        assert argv[:1] == ["generator"] and "--config" not in argv  # the default config
        assert main(argv) == 0
        out = root / argv[argv.index("--out") + 1]
    return {"root": root, "files": files, "model": out}


def _generate_config(ckpt: Path, out: Path, **sections):
    from synthface.generators.dataset.config import GenerateConfig

    data = {
        "generator": {"checkpoint": str(ckpt), "steps": 2, "sampler": "ddim", "batch_size": 4},
        "identities": {"count": 2, "samples_per_identity": 2, "anchor_iterations": 2},
        "output": {"dir": str(out), "image_format": "jpg"},
        "report": {"enabled": False},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return GenerateConfig.model_validate(data)


def test_documented_import_then_dataset_from_contexts_without_an_encoder(imported, monkeypatch):
    from synthface.generators import encoder as encoder_module
    from synthface.generators.dataset import generate_dataset
    from synthface.pipeline.atomic import file_sha256
    from synthface.pipeline.embedding_space import read_anchor_space
    from synthface.pipeline.shards import iter_samples
    from synthface.pipeline.shards.verify import verify_dataset

    root, model = imported["root"], imported["model"]
    doc = json.loads((model / "config.json").read_text())
    assert doc["config"]["encoder"] == {"path": None, "space": "elasticface"}
    assert doc["config"]["data"]["path"] is None and doc["config"]["image_size"] == 128
    unet = doc["provenance"]["files"]["unet"]
    assert unet["name"] == RELEASED_NAMES["unet"]
    assert unet["sha256"] == file_sha256(imported["files"]["unet"])[0]

    def no_encoder(*args, **kwargs):
        raise AssertionError("UIFace sampling must not load an identity encoder")

    monkeypatch.setattr(encoder_module, "load_identity_encoder", no_encoder)
    contexts = _contexts(root / "contexts.npy")
    qc = _recognizer(root / "qc-8d", 8)
    out = root / "ds"
    cfg = _generate_config(
        model,
        out,
        identities={"anchors": str(contexts)},
        output={"image_size": 112},
        qc={"recognizer": str(qc)},
        report={"enabled": True, "contact_identities": 2, "contact_samples": 2},
    )
    summary = generate_dataset(cfg)
    assert verify_dataset(out)["ok"]
    samples = list(iter_samples(out))
    assert len(samples) == 4
    assert all(s["image"].shape == (112, 112, 3) for s in samples)
    assert all("anchor_cos" not in s["meta"]["qc"] for s in samples)  # an independent judge
    manifest = json.loads((out / "dataset.json").read_text())
    space = manifest["splits"]["train"]["extra"]["embedding_space"]
    assert space == summary["embedding_space"]
    assert space["conditioning"] == space["anchors"] == "elasticface"
    assert space["anchors_from"] == "sidecar contexts.npy.json" and not space["anchor_cos"]
    assert space["qc_recognizer"] == "sha256:" + file_sha256(qc / "model.safetensors")[0]
    assert read_anchor_space(out / "plan" / "anchors.npy") == "elasticface"
    np.testing.assert_allclose(
        np.load(out / "plan" / "anchors.npy")[0],
        np.load(contexts)[0] / np.linalg.norm(np.load(contexts)[0]),
        rtol=1e-6,
    )


def test_resize_is_antialiased_and_happens_before_encoding():
    from synthface.generators.dataset.stages import resize

    stripes = np.zeros((1, 128, 128, 3), np.uint8)
    stripes[:, :, ::2] = 255  # one-pixel stripes: point sampling would keep them
    small = resize(stripes, (112, 112))
    assert small.shape == (1, 112, 112, 3)
    assert 100 < small.mean() < 155 and small.std() < 60  # averaged, not aliased


def _refused(cfg, match: str):
    from synthface.generators.dataset import generate_dataset

    with pytest.raises((ConfigError, InputError), match=match) as err:
        generate_dataset(cfg)
    assert "\n" not in str(err.value)
    assert not Path(cfg.output.dir).exists()  # refused at plan time: no shard was started
    return str(err.value)


def test_imported_model_without_region_needs_anchors_or_whole_sphere(imported):
    from synthface.generators.dataset import prepare_generation

    root, model = imported["root"], imported["model"]
    qc = {"recognizer": str(_recognizer(root / "qc-8d-b", 8))}
    _refused(_generate_config(model, root / "r1", qc=qc), r"--anchor-region sphere")
    prepared = prepare_generation(
        _generate_config(model, root / "r2", qc=qc, identities={"anchor_region": "sphere"})
    )
    assert prepared.dataset_config["identities"]["count"] == 2
    assert np.load(root / "r2" / "plan" / "anchors.npy").shape == (2, 512)


def test_mismatched_spaces_are_refused_before_sampling(imported):
    root, model = imported["root"], imported["model"]
    contexts = {"anchors": str(_contexts(root / "ctx.npy"))}
    # the encoder doubling as QC recognizer: another dimension, then the same one
    enc128 = _recognizer(root / "enc-128d", 128)
    cfg = _generate_config(
        model, root / "m1", generator={"encoder": str(enc128)}, identities=contexts
    )
    _refused(cfg, r"gives 128-d embeddings, the generator's contexts and anchors are 512-d")
    enc512 = _recognizer(root / "enc-512d", 512)
    cfg = _generate_config(
        model, root / "m2", generator={"encoder": str(enc512)}, identities=contexts
    )
    msg = _refused(cfg, r"is not in the anchors' embedding space 'elasticface'")
    assert "--encoder PATH" in msg
    # contexts declared in another space, or of another dimension
    other = {"anchors": str(_contexts(root / "ctx-arcface.npy", space="arcface-r50"))}
    qc = {"recognizer": str(_recognizer(root / "qc-8d-c", 8))}
    cfg = _generate_config(model, root / "m3", identities=other, qc=qc)
    _refused(cfg, r"declares embedding space 'arcface-r50', the generator is conditioned in")
    np.save(root / "ctx-128.npy", np.ones((3, 128), np.float32))
    short = {"anchors": str(root / "ctx-128.npy")}
    cfg = _generate_config(model, root / "m4", identities=short, qc=qc)
    _refused(cfg, r"must be a numeric \(N, 512\) array")
    # a leakage gallery of another dimension, or declared in another space, than QC's
    from synthface.pipeline.embedding_space import write_anchor_space

    np.save(root / "gallery-16.npy", np.ones((4, 16), np.float32))
    cfg = _generate_config(
        model, root / "m5", identities=contexts, qc={**qc, "gallery": str(root / "gallery-16.npy")}
    )
    _refused(cfg, r"gallery embeddings have 16 dims but the QC recognizer gives 8")
    np.save(root / "gallery-8.npy", np.ones((4, 8), np.float32))
    write_anchor_space(root / "gallery-8.npy", "arcface-r50")
    cfg = _generate_config(
        model, root / "m6", identities=contexts, qc={**qc, "gallery": str(root / "gallery-8.npy")}
    )
    _refused(cfg, r"qc.gallery: .*declares embedding space 'arcface-r50', the QC recognizer")


def test_import_with_encoder_records_its_fingerprint_and_qc_must_match(imported, tmp_path):
    from synthface.generators.dataset import prepare_generation
    from synthface.generators.uiface import convert
    from synthface.pipeline.embedding_space import recognizer_fingerprint

    files = imported["files"]
    elastic = _recognizer(tmp_path / "elasticface", 512, seed=1)
    config = convert.default_import_config()  # the shipped file, read as documented
    config.uiface.unet = type(config.uiface.unet)(**TINY_UNET)
    config.autoencoder.block_out_channels = [TINY_VQ, 2 * TINY_VQ, 4 * TINY_VQ]
    info = convert.import_uiface(
        files["unet"], files["enc"], files["dec"], tmp_path / "gen", config, encoder=elastic
    )
    assert info["embedding_space"] == recognizer_fingerprint(elastic)
    assert (
        info["embedding_space"]
        == "sha256:"
        + __import__("hashlib").sha256((elastic / "model.safetensors").read_bytes()).hexdigest()
    )
    contexts = {"anchors": str(_contexts(tmp_path / "ctx.npy", space=None))}  # undeclared
    same_dim_other = _recognizer(tmp_path / "other-512d", 512, seed=2)
    cfg = _generate_config(
        tmp_path / "gen",
        tmp_path / "a",
        generator={"encoder": str(same_dim_other)},
        identities=contexts,
    )
    _refused(cfg, r"is not in the anchors' embedding space sha256:")
    # the recorded encoder (the checkpoint's encoder.path) scores images against the anchors
    prepare_generation(_generate_config(tmp_path / "gen", tmp_path / "b", identities=contexts))
    record = json.loads((tmp_path / "b" / "plan" / "embedding_space.json").read_text())
    assert record["anchor_cos"] and record["anchors"] == info["embedding_space"]
    assert record["anchors_from"].startswith("undeclared")


def test_embedding_space_names_and_sidecars_are_checked(tmp_path):
    from synthface.pipeline.embedding_space import check_space, read_anchor_space, sidecar_path

    assert check_space("elasticface", "x") == "elasticface"
    for bad in ("", "two words", "sha256:abc", "../x"):
        with pytest.raises(ConfigError, match=r"not an embedding space|are fingerprints"):
            check_space(bad, "--embedding-space")
    anchors = tmp_path / "a.npy"
    sidecar_path(anchors).write_text('{"space": "elasticface", "colour": "red"}')
    with pytest.raises(ConfigError, match=r"a\.npy\.json: colour: unknown key"):
        read_anchor_space(anchors)
    assert read_anchor_space(tmp_path / "none.npy") is None


def test_documented_sample_command_parses_to_the_walkthrough_settings(imported, monkeypatch):
    from synthface.generators.cli import sample_config
    from synthface.pipeline.cli import build_parser

    monkeypatch.chdir(imported["root"])
    commands = _documented_commands("### From imported weights to a dataset", "generator")
    [sample] = [c for c in commands if c[1] == "sample"]
    args = build_parser().parse_args(sample)
    cfg = sample_config(args)
    assert cfg.output.image_size == 112 and cfg.identities.anchors.endswith("contexts.npy")
    assert cfg.generator.encoder is None and cfg.qc.recognizer is not None


def test_anchors_within_declared_embeddings_inherit_their_space(tmp_path, capsys):
    from synthface.pipeline.cli import main
    from synthface.pipeline.embedding_space import read_anchor_space, write_anchor_space

    emb = tmp_path / "emb.npy"
    np.save(emb, np.random.default_rng(0).standard_normal((12, ID_DIM)).astype(np.float32))
    write_anchor_space(emb, "elasticface")
    out = tmp_path / "anchors.npy"
    argv = ["generator", "anchors", "--n", "4", "--dim", str(ID_DIM), "--out", str(out)]
    assert main([*argv, "--iterations", "2", "--within", str(emb), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embedding_space"] == "elasticface"
    assert read_anchor_space(out) == "elasticface"
    assert main([*argv, "--iterations", "2", "--json"]) == 0  # plain Tammes: no space
    assert read_anchor_space(out) is None
