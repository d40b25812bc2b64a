"""Train the latent-space autoencoder itself (config kind ``autoencoders``).

The project cannot download VQ-f4 weights, so a latent-space generator on the procedural
world needs an autoencoder trained here. The result is a diffusers ``save_pretrained``
directory (``config.json`` + ``diffusion_pytorch_model.safetensors``), exactly what
``autoencoder.path`` of a generator config loads (``synthface.generators.autoencoder``
then takes the latent geometry from it).

Loss: L1 and/or MSE reconstruction, plus the VQ codebook/commitment loss that diffusers'
``VQModel`` returns (``kind: vq``) or a small KL term (``kind: kl``). No perceptual or
adversarial term: they need pretrained networks the project does not have.

Checkpoints are complete autoencoder directories (the sampling weights: the EMA when
``train.ema_decay`` > 0) plus ``training/`` (raw weights, optimizer, step), written
atomically; a resumed run continues from the newest one and reads the data stream from
where it stopped (``synthface.generators.data.training_batches``). The finished model in
``final/`` carries ``quality.json`` (PSNR, SSIM, L1 on held-out images) and
``contact_sheet.png`` (originals over reconstructions).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from synthface.generators.checkpoint import (
    find_resume_checkpoint,
    prune_checkpoints,
    refuse_old_checkpoints,
)
from synthface.pipeline.config import StrictModel, config_hash
from synthface.pipeline.errors import ConfigError, InputError
from synthface.pipeline.paths import InputPath, OutputPath

# diffusers' weights name in a save_pretrained directory (what autoencoder.path loads).
AE_WEIGHTS = "diffusion_pytorch_model.safetensors"


class AutoencoderModelConfig(StrictModel):
    """Shape of the diffusers model; each level after the first halves the resolution."""

    kind: Literal["vq", "kl"] = "vq"
    block_out_channels: list[int] = Field(default=[32, 64, 128], min_length=1)
    layers_per_block: int = Field(default=1, ge=1)
    latent_channels: int = Field(default=3, ge=1)
    # VQ only: codebook size.
    num_vq_embeddings: int = Field(default=256, ge=2)
    norm_num_groups: int = Field(default=32, ge=1)
    # Latents are multiplied by it before the UNet sees them. Unset: measured when training
    # ends as 1 / std of the held-out images' latents (unit variance for the UNet) and
    # written into the saved model's config, which generator configs then take.
    scaling_factor: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _groups(self) -> AutoencoderModelConfig:
        for ch in self.block_out_channels:
            if ch % self.norm_num_groups:
                raise ValueError(
                    f"block_out_channels entry {ch} is not divisible by "
                    f"norm_num_groups={self.norm_num_groups}"
                )
        return self

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


class AutoencoderDataConfig(StrictModel):
    """Training shards (``synthface world make`` writes them) and the held-out set."""

    path: InputPath | None = None
    split: str = "train"
    # Held-out images for the quality report: another dataset (e.g. the world's eval
    # identity stream) or, without it, ``eval_split`` of ``path``.
    eval_path: InputPath | None = None
    eval_split: str = "eval"
    image_size: int = Field(default=64, ge=8)
    shuffle_buffer: int = Field(default=1000, ge=1)
    hflip: bool = True


class AutoencoderLossConfig(StrictModel):
    l1: float = Field(default=1.0, ge=0)
    mse: float = Field(default=0.0, ge=0)
    # Multiplies the VQ loss diffusers returns (codebook + beta * commitment).
    vq: float = Field(default=1.0, ge=0)
    # kind kl only.
    kl: float = Field(default=1e-6, ge=0)

    @model_validator(mode="after")
    def _some(self) -> AutoencoderLossConfig:
        if self.l1 == 0 and self.mse == 0:
            raise ValueError("l1 and mse are both 0: nothing would teach reconstruction")
        return self


class AutoencoderTrainLoop(StrictModel):
    steps: int = Field(default=2000, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    # 0 = no EMA: the raw weights are saved.
    ema_decay: float = Field(default=0.0, ge=0, lt=1)
    seed: int = 0
    checkpoint_every: int = Field(default=250, ge=1)
    log_every: int = Field(default=25, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    output_dir: OutputPath = "out/autoencoders/run"


class AutoencoderEvalConfig(StrictModel):
    images: int = Field(default=256, ge=1)
    sheet_images: int = Field(default=16, ge=1)
    batch_size: int = Field(default=64, ge=1)


class AutoencoderTrainConfig(StrictModel):
    """Config kind ``autoencoders`` (``configs/autoencoders/*.yaml``)."""

    model: AutoencoderModelConfig = Field(default_factory=AutoencoderModelConfig)
    data: AutoencoderDataConfig = Field(default_factory=AutoencoderDataConfig)
    loss: AutoencoderLossConfig = Field(default_factory=AutoencoderLossConfig)
    train: AutoencoderTrainLoop = Field(default_factory=AutoencoderTrainLoop)
    eval: AutoencoderEvalConfig = Field(default_factory=AutoencoderEvalConfig)

    @model_validator(mode="after")
    def _size(self) -> AutoencoderTrainConfig:
        if self.data.image_size % self.model.downsample:
            raise ValueError(
                f"data.image_size {self.data.image_size} is not divisible by the "
                f"downsampling factor {self.model.downsample} of model.block_out_channels"
            )
        return self


# Fields that may change between a run and its resumption.
_RESUMABLE = {"steps", "checkpoint_every", "log_every", "keep_checkpoints", "output_dir"}


def resume_hash(cfg: AutoencoderTrainConfig) -> str:
    data = cfg.model_dump(mode="json")
    for key in _RESUMABLE:
        data["train"].pop(key, None)
    data.pop("eval", None)
    data["model"].pop("scaling_factor", None)  # used only when the final model is saved
    data["data"].pop("eval_path", None)
    data["data"].pop("eval_split", None)
    return config_hash(data)


def build_model(cfg: AutoencoderModelConfig) -> torch.nn.Module:
    """A fresh diffusers ``VQModel`` / ``AutoencoderKL`` of the configured shape."""
    from diffusers import AutoencoderKL, VQModel

    levels = len(cfg.block_out_channels)
    common = dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        scaling_factor=1.0 if cfg.scaling_factor is None else cfg.scaling_factor,
    )
    if cfg.kind == "kl":
        return AutoencoderKL(**common)
    return VQModel(**common, num_vq_embeddings=cfg.num_vq_embeddings)


def images_to_unit(images: list[np.ndarray], size: int) -> torch.Tensor:
    """HxWx3 uint8 images -> (N,3,size,size) in [-1, 1], resized (antialiased) if needed."""
    out = []
    for im in images:
        if not (isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] == 3):
            shape = getattr(im, "shape", type(im).__name__)
            raise InputError(f"autoencoder data: image must be HxWx3 uint8 (got {shape})")
        x = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).float()[None]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        out.append(x[0])
    return torch.stack(out) / 127.5 - 1.0


def reconstruction_loss(
    model, images: torch.Tensor, cfg: AutoencoderTrainConfig, gen: torch.Generator | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted training loss of one batch and its parts."""
    lc = cfg.loss
    if cfg.model.kind == "vq":
        out = model(images)
        recon, extra = out.sample, out.commit_loss.mean() * lc.vq
    else:
        dist = model.encode(images).latent_dist
        z = dist.sample(generator=gen) if gen is not None else dist.mode()
        recon = model.decode(z).sample
        extra = dist.kl().mean() * lc.kl
    l1 = (recon - images).abs().mean()
    mse = F.mse_loss(recon, images)
    loss = lc.l1 * l1 + lc.mse * mse + extra
    return loss, {
        "loss": float(loss.detach()),
        "l1": float(l1.detach()),
        "reg": float(extra.detach()),
    }


# ------------------------------------------------------------------ quality


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of images in [0, 1] (Gaussian 7x7 window, channels averaged)."""
    w = _gaussian_window().to(a)
    c1, c2 = 0.01**2, 0.03**2

    def blur(x):
        return F.conv2d(x, w, groups=3)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return s.flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1] (capped at 100 dB for identical images)."""
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp(min=1e-10))).clamp(max=100.0)


def heldout_images(cfg: AutoencoderTrainConfig, limit: int) -> torch.Tensor:
    """The first ``limit`` held-out images in [-1, 1] (manifest order: reproducible)."""
    from synthface.pipeline.shards.index_reader import iter_samples

    path = cfg.data.eval_path or cfg.data.path
    if path is None:
        raise ConfigError("data.eval_path (or data.path) is not set in the autoencoder config")
    images = []
    for sample in iter_samples(path, cfg.data.eval_split):
        images.append(sample["image"])
        if len(images) >= limit:
            break
    if not images:
        raise InputError(f"{path}: split {cfg.data.eval_split!r} holds no held-out images")
    return images_to_unit(images, cfg.data.image_size)


@torch.no_grad()
def reconstruct(model, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Deterministic reconstructions (quantized / KL mode) in [-1, 1]."""
    model.eval()
    outs = []
    device = next(model.parameters()).device
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device)
        if hasattr(model, "quantize"):
            recon = model(x).sample
        else:
            recon = model.decode(model.encode(x).latent_dist.mode()).sample
        outs.append(recon.float().cpu().clamp(-1, 1))
    return torch.cat(outs)


def quality(model, images: torch.Tensor, batch_size: int) -> tuple[dict[str, float], torch.Tensor]:
    """PSNR / SSIM / L1 of the reconstructions of ``images``, and the reconstructions."""
    recon = reconstruct(model, images, batch_size)
    a, b = (images + 1) / 2, (recon + 1) / 2
    p, s = psnr(a, b), ssim(a, b)
    report = {
        "images": len(images),
        "psnr_db": round(float(p.mean()), 3),
        "psnr_db_min": round(float(p.min()), 3),
        "ssim": round(float(s.mean()), 4),
        "l1": round(float((a - b).abs().mean()), 5),
    }
    return report, recon


def contact_sheet_png(originals: torch.Tensor, recons: torch.Tensor, per_row: int = 8) -> bytes:
    """Rows of originals, each above the row of their reconstructions (2 px gaps)."""
    import io

    from PIL import Image

    n, _, h, w = originals.shape
    rows = math.ceil(n / per_row)
    gap = 2
    sheet = np.full((rows * (2 * h + 2 * gap), per_row * (w + gap), 3), 255, dtype=np.uint8)

    def to_uint8(x: torch.Tensor) -> np.ndarray:
        return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()

    for i in range(n):
        r, c = divmod(i, per_row)
        y, x = r * (2 * h + 2 * gap), c * (w + gap)
        sheet[y : y + h, x : x + w] = to_uint8(originals[i])
        sheet[y + h + gap // 2 : y + 2 * h + gap // 2, x : x + w] = to_uint8(recons[i])
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format="PNG")
    return buf.getvalue()


@torch.no_grad()
def latent_scale(model, images: torch.Tensor, batch_size: int) -> float:
    """1 / std of the (unquantized / KL-mode) latents of ``images``."""
    model.eval()
    device = next(model.parameters()).device
    zs = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device)
        enc = model.encode(x)
        zs.append((enc.latents if hasattr(enc, "latents") else enc.latent_dist.mode()).cpu())
    std = float(torch.cat(zs).float().std())
    if not math.isfinite(std) or std <= 0:
        raise InputError(f"autoencoder latents have standard deviation {std}")
    return 1.0 / std


def finish(model, cfg: AutoencoderTrainConfig, out: Path) -> dict[str, Any]:
    """Save the trained model into ``out`` with its measured scale, quality and contact sheet."""
    from synthface.pipeline.atomic import atomic_write_bytes, atomic_write_json

    images = heldout_images(cfg, cfg.eval.images)
    scale = cfg.model.scaling_factor
    if scale is None:
        scale = latent_scale(model, images, cfg.eval.batch_size)
    model.register_to_config(scaling_factor=scale)
    model.save_pretrained(out, safe_serialization=True)
    report, recon = quality(model, images, cfg.eval.batch_size)
    report["scaling_factor"] = round(scale, 6)
    report["heldout"] = f"{cfg.data.eval_path or cfg.data.path}:{cfg.data.eval_split}"
    k = min(cfg.eval.sheet_images, len(images))
    atomic_write_bytes(out / "contact_sheet.png", contact_sheet_png(images[:k], recon[:k]))
    atomic_write_json(out / "quality.json", report)
    return report


# ------------------------------------------------------------------ checkpoints


def _save(model, path: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
    """``save_pretrained`` of ``model`` (with ``weights`` swapped in) into the directory ``path``."""
    if weights is None:
        model.save_pretrained(path, safe_serialization=True)
        return
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict({**backup, **weights})
    try:
        model.save_pretrained(path, safe_serialization=True)
    finally:
        model.load_state_dict(backup)


def _save_checkpoint(final: Path, cfg, model, ema, opt, step: int) -> None:
    from synthface.generators.checkpoint import save_tensors
    from synthface.pipeline.atomic import atomic_dir, atomic_write_json

    with atomic_dir(final) as tmp:
        _save(model, tmp, ema.state_dict() if ema is not None else None)
        tr = tmp / "training"
        tr.mkdir()
        save_tensors(tr / "raw.safetensors", model.state_dict())
        torch.save(opt.state_dict(), tr / "optimizer.pt")
        atomic_write_json(tr / "state.json", {"step": step, "resume_hash": resume_hash(cfg)})


def load_autoencoder(path: str | Path) -> torch.nn.Module:
    """A trained autoencoder directory (``final/`` or a checkpoint), its class from config.json."""
    import json

    from diffusers import AutoencoderKL, VQModel

    path = Path(path)
    try:
        name = json.loads((path / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}/config.json: not a diffusers autoencoder ({exc})") from None
    classes = {"VQModel": VQModel, "AutoencoderKL": AutoencoderKL}
    if name not in classes:
        raise InputError(f"{path}: model class {name!r} is not VQModel or AutoencoderKL")
    return classes[name].from_pretrained(path, use_safetensors=True)


def _batches(cfg: AutoencoderTrainConfig, data, start: int) -> Iterator[torch.Tensor]:
    from synthface.generators.data import ShardSource, training_batches

    if data is None:
        if cfg.data.path is None:
            raise ConfigError("data.path is not set in the autoencoder config")
        data = ShardSource(
            cfg.data.path, split=cfg.data.split, shuffle_buffer=cfg.data.shuffle_buffer
        )
    for samples in training_batches(
        data,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        start_step=start,
        segment_steps=cfg.train.checkpoint_every,
    ):
        yield images_to_unit([s["image"] for s in samples], cfg.data.image_size)


def train_autoencoder(
    cfg: AutoencoderTrainConfig,
    *,
    data=None,
    steps: int | None = None,
    resume: bool = True,
    log: Callable[[dict], None] | None = None,
    device: str | None = None,
    resume_allow_partial: bool = False,
) -> dict[str, Any]:
    """Train (or resume) the autoencoder; returns ``step``, ``final`` and ``quality``.

    ``data``: a sequence of sample dicts or a ``ShardSource`` (default: ``cfg.data``);
    ``steps``: stop at this global step (a later call resumes).
    """
    from synthface.generators.checkpoint import check_state_compatible, load_tensors
    from synthface.generators.ema import EMA
    from synthface.recognition.training.data import segment_seed

    tc = cfg.train
    total = min(steps or tc.steps, tc.steps)
    run_dir = Path(tc.output_dir)
    found = find_resume_checkpoint(run_dir, resume_allow_partial, AE_WEIGHTS) if resume else None
    if not resume:
        refuse_old_checkpoints(run_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    ema = EMA(model, tc.ema_decay) if tc.ema_decay > 0 else None
    start = 0
    if found is not None:
        ckpt, state = found
        if state.get("resume_hash") != resume_hash(cfg):
            raise ConfigError(
                f"{ckpt}: checkpoint was trained with a different config; use a new "
                "train.output_dir or restore the config (only train.steps and logging may change)"
            )
        raw = load_tensors(ckpt / "training" / "raw.safetensors")
        check_state_compatible(model, raw, ckpt / "training" / "raw.safetensors")
        model.load_state_dict(raw)
        if ema is not None:
            ema.load_state_dict(load_tensors(ckpt / AE_WEIGHTS))
        opt.load_state_dict(
            torch.load(ckpt / "training" / "optimizer.pt", map_location=dev, weights_only=True)
        )
        start = int(state["step"])
    batches = _batches(cfg, data, start)
    history: list[dict] = []
    t0 = time.perf_counter()
    for step in range(start, total):
        gen = torch.Generator().manual_seed(segment_seed(tc.seed, 0, step))
        images = next(batches)
        if cfg.data.hflip:
            flip = torch.rand(len(images), generator=gen) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        model.train()
        loss, parts = reconstruction_loss(model, images.to(dev), cfg, gen)
        if not torch.isfinite(loss):
            raise InputError(f"autoencoder loss became {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        if ema is not None:
            ema.update(model, step)
        done = step + 1
        parts["step"] = done
        history.append(parts)
        if log is not None and (done % tc.log_every == 0 or done == total):
            rate = (done - start) / max(time.perf_counter() - t0, 1e-9)
            log({**parts, "steps_per_s": round(rate, 3)})
        if done % tc.checkpoint_every == 0 or done == total:
            _save_checkpoint(
                run_dir / "checkpoints" / f"step-{done:08d}", cfg, model, ema, opt, done
            )
            prune_checkpoints(run_dir, tc.keep_checkpoints)
    final, report = None, None
    # A run killed between its last checkpoint and final/ resumes at the end: export then.
    if total == tc.steps and (start < total or not (run_dir / "final" / AE_WEIGHTS).is_file()):
        from synthface.pipeline.atomic import atomic_dir

        if ema is not None:
            ema.copy_to(model)
        final = run_dir / "final"
        with atomic_dir(final) as tmp:
            report = finish(model, cfg, tmp)
    return {"step": max(start, total), "final": final, "quality": report, "history": history}
