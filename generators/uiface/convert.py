"""Import UIFace's released weights: every tensor named, shaped and accounted for.

Files (from the reference code, ``Tencent/TFace/generation/uiface``):

* UNet, ``ema_averaged_model_<step>.ckpt``: the EMA copy's ``state_dict`` - the UNet
  under ``module.eps_model.`` and the DDPM's 8 schedule buffers under ``module.``
  (``betas``, ``alphas``, ``sigmas``, ...). The non-EMA ``model_<step>.ckpt`` is the
  training wrapper's ``state_dict``, whose prefix depends on the Lightning version (and
  may hold the same UNet twice); it is accepted when every key is a UNet tensor under
  some ``...eps_model.`` prefix or a schedule buffer next to it, and all copies are
  identical - otherwise refused, naming the first key that does not fit.
* ``first_stage_encoder_state_dict.pt``: ``encoder.*`` + ``quant_conv.*`` of the LDM
  ffhq256 VQ-f4 autoencoder (embed_dim 3, n_embed 8192, ch 128, ch_mult [1, 2, 4],
  2 residual blocks, no attention except the mid block);
  ``first_stage_decoder_state_dict.pt``: ``decoder.*``, ``quantize.embedding.weight``,
  ``post_quant_conv.*``.

The UNet maps one to one onto :class:`UIFaceUNet` (its attention projections are
``Conv1d`` kernels of size 1 in the reference, ``Linear`` here: the trailing 1 is
dropped); the autoencoder onto diffusers' ``VQModel`` (the class diffusers itself uses for
LDM VQ models: same asymmetric-padding downsampler, single-head mid attention, eps 1e-6;
1x1 ``Conv2d`` attention projections become ``Linear``). Names are translated from ours
to the reference's, so the set of expected reference names is derived from the model
that will receive them: a missing, unexpected or misshaped tensor is an error naming it,
and nothing is loaded unless everything matches (``strict=True`` after the check).
Files are read with ``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path

import torch

from synthface.generators.checkpoint import state_mismatches
from synthface.pipeline.atomic import file_sha256
from synthface.pipeline.embedding_space import check_space, recognizer_fingerprint
from synthface.pipeline.errors import InputError

SCHEDULE_BUFFERS = (
    "betas",
    "alphas",
    "sigmas",
    "sqrt_alphas_inv",
    "alpha_bars",
    "sqrt_alpha_bars",
    "sqrt_one_minus_alpha_bars",
    "one_minus_alphas_over_sqrt_one_minus_alpha_bars",
)
DEFAULT_CONFIG = "synthface:generators/uiface_128.yaml"
# The space of the released model's contexts when the user names none: ElasticFace
# embeddings (UIFace trained on ``elastic_embed.npy``). Which ElasticFace weights is not
# published, so this is a name, not a fingerprint.
RELEASED_SPACE = "elasticface"
UNET_MARKER = "eps_model."
ANCHOR = "image_proj.weight"  # a tensor every reference UNet has

# LDM VQ-f4 as released for IDiff-Face / UIFace (``first_stage_config.yaml``).
VQ_F4 = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(128, 256, 512),
    layers_per_block=2,
    latent_channels=3,
    num_vq_embeddings=8192,
    vq_embed_dim=3,
    norm_num_groups=32,
    sample_size=256,
    scaling_factor=1.0,
)


def load_flat_state(path: str | Path, field: str) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` file, read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{field}: {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{field}: {path}: not a weights-only torch checkpoint ({first})"
        ) from None
    if not isinstance(obj, dict):
        raise InputError(f"{field}: {path}: holds a {type(obj).__name__}, not a state dict")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(
                f"{field}: {path}: entry {key!r} is a {type(value).__name__}, not a tensor "
                "(expected a flat state dict)"
            )
    return obj


# --------------------------------------------------------------------------- checking
def match_state(
    own: dict[str, torch.Tensor],
    file_state: dict[str, torch.Tensor],
    translate: Callable[[str], tuple[str, tuple[int, ...]]],
    source: str,
    what: str,
    prefix: str = "",
) -> dict[str, torch.Tensor]:
    """``own`` names -> tensors taken from ``file_state`` under their reference names.

    ``translate(own_name) -> (reference_name, reference_shape)``. Raises one
    :class:`InputError` listing counts and the first misshaped, missing and unexpected
    reference names (as the file spells them: with ``prefix``); returns the converted
    state only when everything matches.
    """
    expected: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name in own:
        ref, shape = translate(name)
        expected[ref] = (name, shape)
    parts = state_mismatches({r: shape for r, (_, shape) in expected.items()}, file_state, prefix)
    if parts:
        raise InputError(f"{source}: does not match {what}: " + "; ".join(parts))
    out = {}
    for ref, (name, _) in expected.items():
        out[name] = file_state[ref].reshape(own[name].shape).to(own[name].dtype).clone()
    return out


# --------------------------------------------------------------------------- UNet names
_RES = {
    "time_proj": "time_emb.1",
    "scale_proj": "scale_emb",
    "shift_proj": "shift_emb",
    "norm2": "norm2.norm",
    "conv_shortcut": "shortcut",
}
_ATTN = {
    "proj_in": "x_proj_in",
    "proj_out": "x_proj_out",
    "norm": "x_norm",
    "context_proj": "c_proj_in",
    "context_norm": "c_norm",
    "attn1": "self_attention",
    "attn2": "cross_attention",
}
_PROJ = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out.0": "proj_out"}
_TOP = {
    "conv_in": "image_proj",
    "time_embedding.linear_1": "time_emb.lin1",
    "time_embedding.linear_2": "time_emb.lin2",
    "context_proj": "context_emb",
    "conv_norm_out": "norm",
    "conv_out": "final",
}


def _rename(name: str, table: dict[str, str]) -> str:
    """Replace the longest table key that is a dotted prefix of ``name``."""
    for key in sorted(table, key=len, reverse=True):
        if name == key or name.startswith(key + "."):
            return table[key] + name[len(key) :]
    return name


def unet_reference_name(name: str, config) -> tuple[str, bool]:
    """Our ``UIFaceUNet`` parameter name -> (reference name, is a Conv1d kernel).

    The reference keeps its blocks in two flat lists: ``down`` (per level,
    ``num_res_blocks`` blocks then a ``Downsample`` except at the last level) and ``up``
    (per level from the deepest, ``num_res_blocks + 1`` blocks then an ``Upsample`` except
    at level 0); each block holds ``res`` and optionally ``attn``.
    """
    nb = config.num_res_blocks
    if name == "empty_context":
        return "empty_context_embedding", False
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsampler|upsampler)(.*)$", name)
    if m:
        kind, idx, part, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        per = nb if kind == "down" else nb + 1  # blocks per level, then one resampler
        start = idx * (per + 1)  # up level u is the reference's level (levels - 1 - u)
        if part in ("downsampler", "upsampler"):
            return f"{kind}.{start + per}.conv{rest}", False
        j, leaf = re.match(r"\.(\d+)\.(.*)$", rest).groups()
        return _block_name(f"{kind}.{start + int(j)}", part, leaf)
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)$", name)
    if m:
        part, j, leaf = m.groups()
        if part == "resnets":
            return f"middle.res{int(j) + 1}.{_rename(leaf, _RES)}", False
        ref, conv1d = _attn_leaf(leaf)
        return f"middle.attn.{ref}", conv1d
    return _rename(name, _TOP), False


def _attn_leaf(leaf: str) -> tuple[str, bool]:
    m = re.match(r"(attn[12])\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", leaf)
    if m:
        block, proj, kind = m.groups()
        return f"{_ATTN[block]}.{_PROJ[proj]}.{kind}", kind == "weight"
    return _rename(leaf, _ATTN), False


def _block_name(prefix: str, part: str, leaf: str) -> tuple[str, bool]:
    if part == "resnets":
        return f"{prefix}.res.{_rename(leaf, _RES)}", False
    ref, conv1d = _attn_leaf(leaf)
    return f"{prefix}.attn.{ref}", conv1d


def split_unet_file(
    state: dict[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """(UNet tensors under reference names, schedule buffers, the UNet's key prefix)."""
    prefixes = sorted(
        k[: -len(ANCHOR)]
        for k in state
        if k.endswith(ANCHOR) and k[: -len(ANCHOR)].endswith(UNET_MARKER)
    )
    if not prefixes:
        raise InputError(
            f"{source}: no UIFace UNet in this file (no '...{UNET_MARKER}{ANCHOR}' tensor); "
            "expected ema_averaged_model_*.ckpt or model_*.ckpt from UIFace's training"
        )
    copies = [{k[len(p) :]: v for k, v in state.items() if k.startswith(p)} for p in prefixes]
    first = copies[0]
    for p, other in zip(prefixes[1:], copies[1:], strict=True):
        if other.keys() != first.keys() or any(not torch.equal(other[k], first[k]) for k in first):
            raise InputError(
                f"{source}: holds two different UNets ({prefixes[0]}*, {p}*); "
                "cannot tell which one to convert"
            )
    parents = {p[: -len(UNET_MARKER)] for p in prefixes}
    buffers: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if any(key.startswith(p) for p in prefixes):
            continue
        parent, _, leaf = key.rpartition(".")
        parent = parent + "." if parent else ""
        if leaf in SCHEDULE_BUFFERS and parent in parents:
            buffers.setdefault(leaf, value)
            if not torch.equal(buffers[leaf], value):
                raise InputError(f"{source}: two different copies of the schedule buffer {key}")
            continue
        raise InputError(
            f"{source}: unexpected tensor {key} (neither a UNet weight under "
            f"{prefixes[0]} nor a DDPM schedule buffer)"
        )
    return first, buffers, prefixes[0]


def check_schedule(buffers: dict[str, torch.Tensor], diffusion, source: str) -> None:
    """The file's betas must be the linear schedule the generator config describes."""
    betas = buffers.get("betas")
    if betas is None:
        return
    if diffusion.beta_schedule != "linear":
        raise InputError(
            f"{source}: the checkpoint was trained with linear betas; the config says "
            f"diffusion.beta_schedule={diffusion.beta_schedule!r}"
        )
    ours = torch.linspace(diffusion.beta_start, diffusion.beta_end, diffusion.num_train_timesteps)
    if betas.shape != ours.shape or not torch.allclose(betas.float(), ours, atol=1e-7):
        raise InputError(
            f"{source}: module.betas {tuple(betas.shape)} from {float(betas[0]):.3g} to "
            f"{float(betas[-1]):.3g} is not the config's linear schedule "
            f"({diffusion.num_train_timesteps} steps, {diffusion.beta_start:g} to "
            f"{diffusion.beta_end:g})"
        )


def convert_unet(
    state: dict[str, torch.Tensor], unet, source: str, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Reference UNet tensors (``prefix`` removed) -> ``unet.state_dict()`` names."""
    own = unet.state_dict()

    def translate(name: str) -> tuple[str, tuple[int, ...]]:
        ref, conv1d = unet_reference_name(name, unet.config)
        shape = tuple(own[name].shape) + ((1,) if conv1d else ())
        return ref, shape

    return match_state(own, state, translate, source, "UIFace's UNet", prefix)


# --------------------------------------------------------------------------- VQ names
_VQ_RES = {"conv_shortcut": "nin_shortcut"}
_VQ_TOP = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
_VQ_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vq_reference_name(name: str, levels: int) -> tuple[str, bool]:
    """diffusers ``VQModel`` name -> (LDM name, is a 1x1 Conv2d attention kernel)."""
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d)\.(.*)$", name)
    if m:
        side, part, j, leaf = m.groups()
        if part == "resnets":
            return f"{side}.mid.block_{int(j) + 1}.{_rename(leaf, _VQ_RES)}", False
        ref = _rename(leaf, _VQ_ATTN)
        conv = ref in ("q.weight", "k.weight", "v.weight", "proj_out.weight")
        return f"{side}.mid.attn_1.{ref}", conv
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.*)$", name)
    if m:
        i, part, j, leaf = m.groups()
        if j is None:
            return f"encoder.down.{i}.downsample.{leaf}", False
        return f"encoder.down.{i}.block.{j}.{_rename(leaf, _VQ_RES)}", False
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)$", name)
    if m:
        u, part, j, leaf = m.groups()
        i = levels - 1 - int(u)
        if j is None:
            return f"decoder.up.{i}.upsample.{leaf}", False
        return f"decoder.up.{i}.block.{j}.{_rename(leaf, _VQ_RES)}", False
    return _rename(name, _VQ_TOP), False


def convert_vq(
    encoder_state: dict[str, torch.Tensor],
    decoder_state: dict[str, torch.Tensor],
    vq,
    sources: tuple[str, str],
) -> dict[str, torch.Tensor]:
    """The two LDM files -> ``vq.state_dict()`` names (each file checked on its own)."""
    own = vq.state_dict()
    levels = len(vq.config.block_out_channels)

    def translate(name: str) -> tuple[str, tuple[int, ...]]:
        ref, conv = vq_reference_name(name, levels)
        return ref, tuple(own[name].shape) + ((1, 1) if conv else ())

    enc_keys = {k: v for k, v in own.items() if k.startswith(("encoder.", "quant_conv."))}
    dec_keys = {k: v for k, v in own.items() if k not in enc_keys}
    out = match_state(enc_keys, encoder_state, translate, sources[0], "the VQ-f4 encoder")
    out.update(match_state(dec_keys, decoder_state, translate, sources[1], "the VQ-f4 decoder"))
    return out


# --------------------------------------------------------------------------- import
def import_uiface(
    unet_path: str | Path,
    vq_encoder_path: str | Path,
    vq_decoder_path: str | Path,
    out: str | Path,
    config=None,
    *,
    embedding_space: str | None = None,
    encoder: str | Path | None = None,
) -> dict:
    """Convert the three released files into a ``uiface`` generator directory at ``out``.

    ``config``: the generator config to build (default: the shipped
    ``configs/generators/uiface_128.yaml``, which describes the released model). Writes
    nothing unless every file converts; the directory is written atomically.

    The checkpoint records the space its contexts live in (``encoder.space``): the
    fingerprint of ``encoder`` (the user's copy of the conditioning recognizer, which is
    then also the checkpoint's ``encoder.path``), else ``embedding_space``, else the
    config's, else :data:`RELEASED_SPACE`. Without ``encoder`` the checkpoint names no
    encoder: sampling UIFace never runs one. The config's training paths (data, encoder)
    describe someone else's machine and are dropped.
    """
    from diffusers import VQModel

    from synthface.generators.autoencoder import Autoencoder
    from synthface.generators.uiface.generator import UIFaceGenerator

    cfg = config or default_import_config()
    if cfg.autoencoder.kind != "vq" or cfg.autoencoder.latent_channels != VQ_F4["vq_embed_dim"]:
        raise InputError(
            "config: autoencoder must be kind: vq with latent_channels: 3 (UIFace's VQ-f4)"
        )
    cfg = cfg.model_copy(deep=True)
    cfg.generator = "uiface"
    cfg.autoencoder.path = None  # the autoencoder travels inside the generator directory
    cfg.data.path = None
    space = embedding_space or cfg.encoder.space or RELEASED_SPACE
    check_space(space, "--embedding-space")
    cfg.encoder.path = None
    if encoder is not None:
        if not Path(encoder).exists():
            raise InputError(f"--encoder: {encoder}: no such recognizer")
        cfg.encoder.path = str(Path(encoder).absolute())
        space = recognizer_fingerprint(encoder)
    cfg.encoder.space = space
    sources = {"unet": unet_path, "vq_encoder": vq_encoder_path, "vq_decoder": vq_decoder_path}
    for flag, path in sources.items():
        if not Path(path).is_file():
            raise InputError(f"--{flag.replace('_', '-')}: {path}: no such file")
    unet_file = load_flat_state(unet_path, "--unet")
    unet_state, buffers, prefix = split_unet_file(unet_file, str(unet_path))
    check_schedule(buffers, cfg.diffusion, str(unet_path))
    denoiser = UIFaceGenerator.build_denoiser(cfg)
    converted = convert_unet(unet_state, denoiser.unet, str(unet_path), prefix)
    denoiser.unet.load_state_dict(converted, strict=True)
    del unet_file, unet_state
    enc = load_flat_state(vq_encoder_path, "--vq-encoder")
    dec = load_flat_state(vq_decoder_path, "--vq-decoder")
    # VQ-f4 with the config's widths (the released ones unless a test shrinks them)
    vq = VQModel(**{**VQ_F4, "block_out_channels": tuple(cfg.autoencoder.block_out_channels)})
    vq.load_state_dict(
        convert_vq(enc, dec, vq, (str(vq_encoder_path), str(vq_decoder_path))), strict=True
    )
    generator = UIFaceGenerator(
        cfg, denoiser=denoiser, autoencoder=Autoencoder(cfg.autoencoder, vq)
    )
    layout = "ema" if prefix == "module.eps_model." else f"non-ema ({prefix})"
    provenance = {
        "imported": "uiface",
        "layout": layout,
        "files": {key: _source_record(path) for key, path in sources.items()},
    }
    generator.save_pretrained(out, provenance=provenance)
    return {
        "out": str(out),
        "layout": layout,
        "embedding_space": space,
        "unet_parameters": sum(p.numel() for p in denoiser.unet.parameters()),
        "autoencoder_parameters": sum(p.numel() for p in vq.parameters()),
        "schedule_checked": "betas" in buffers,
    }


def _source_record(path: str | Path) -> dict:
    """Which released file a checkpoint came from (its name, size and sha256)."""
    digest, size = file_sha256(path)
    return {"name": Path(path).name, "bytes": size, "sha256": digest}


def default_import_config():
    """The shipped ``uiface_128.yaml``, read as every config file is (its ``kind:`` key too)."""
    from synthface.generators.config import GeneratorConfig
    from synthface.pipeline.config import load_config

    return load_config(DEFAULT_CONFIG, GeneratorConfig)
