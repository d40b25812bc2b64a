"""Training loop on accelerate: denoising loss + the ID³ time-weighted identity term.

Loss (our reading of ID³'s Fig. 1 caption, whose signs were lost in the quoted text):

    L = || eps - eps_theta(x_t, t, y, s) ||^2
        + w_id * lambda_t * g_t * (1 - cos(f(clip(x0_hat)), y)),
    x0_hat = (x_t - sqrt(1-a_t) eps_theta) / sqrt(a_t),   lambda_t = 0.5 * (1 - 1 / (1 + exp(-t/T)))

* The inner-product term must *reward* alignment of the one-step reconstruction with the
  condition (the paper maximises a bound on an identity-adjusted likelihood), so it enters
  the minimised loss with a minus sign: -lambda_t <f(x0_hat), y>. Writing it as
  lambda_t (1 - cos) is the same gradient plus the "constant" the caption mentions, and
  keeps the term in [0, 2 lambda_t].
* lambda_t must be positive to be a weight. Read as 0.5 (1 - 1/(1 + exp(-t/T))) it is
  0.25 at t = 0 and falls to 0.5 (1 - 1/(1 + e^-1)) = 0.134 at t = T: it trusts x0_hat most
  when there is little noise, which is the regime where a one-step reconstruction is a
  face the recognizer can read. (The other sign of the exponent would give 0.25 -> 0.366,
  weighting the noisiest, least informative reconstructions most, so we reject it.)
* ``id3.identity_term: clipped_snr`` (default) is this project's change to the published
  term, which says nothing about either point: the recognizer sees the reconstruction
  clipped to its input range [-1, 1] (what the sampler does with x0 too), and the term
  is weighted by g_t = min(1, sqrt(a_t / (1 - a_t))). d x0_hat / d eps_theta is
  -sqrt((1 - a_t) / a_t), about 150 at t = T with the linear schedule: unweighted, the
  noisiest steps, whose reconstructions are furthest from a face, would dominate the
  gradient. With g_t the gradient reaching eps_theta is at most lambda_t at every t.
  ``raw`` is the unclipped, unweighted term (g_t = 1) for comparison; docs/benchmarks.md
  has both on the ID³ fidelity benchmark.
* Samples that drew the null condition (classifier-free dropout) get no identity term:
  there is no y for them to match.

Several processes (``accelerate launch``): each rank draws its own timesteps, noise,
dropout and flips (a generator seeded by (seed, rank, step)) and reads its own part of
the data (``synthface.generators.data``), so N processes compute an N-times larger batch,
not N copies of one. Model and optimizer are prepared (moved, DDP-wrapped) before the
EMA is created and before a checkpoint is loaded, so the EMA and the optimizer state
live on the training device. Only rank 0 logs and writes checkpoints.

Exact resume: model, EMA, optimizer and the fitted attribute histogram are checkpointed;
every per-step random draw comes from the (seed, rank, step) generator, and the data
stream is positioned by computation (``training_batches``), so a resumed run reproduces
the uninterrupted one without re-reading what was already used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthface.generators.autoencoder import build_autoencoder
from synthface.generators.base import GENERATORS
from synthface.generators.checkpoint import (
    find_resume_checkpoint,
    generator_config_json,
    load_tensors,
    load_weights,
    prune_checkpoints,
    refuse_old_checkpoints,
    save_tensors,
)
from synthface.generators.config import GeneratorConfig
from synthface.generators.data import attribute_row, open_source, training_batches
from synthface.generators.ema import EMA
from synthface.generators.id3.attributes import AttributePrior
from synthface.generators.region import store_identity_region
from synthface.generators.sampling import make_scheduler
from synthface.pipeline.atomic import atomic_dir, atomic_write_bytes, atomic_write_json
from synthface.pipeline.config import config_hash
from synthface.pipeline.errors import ConfigError, InputError
from synthface.recognition.training.data import segment_seed

# Fields that may change between a run and its resumption.
_RESUMABLE = {"steps", "checkpoint_every", "log_every", "keep_checkpoints", "output_dir"}


def identity_weight(t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """lambda_t = 0.5 (1 - sigmoid(t / T)) (see the module docstring for the reading)."""
    return 0.5 * (1.0 - torch.sigmoid(t.float() / num_train_timesteps))


def snr_cap(alpha_bar: torch.Tensor) -> torch.Tensor:
    """g_t = min(1, sqrt(a_t / (1 - a_t))): bounds d(term)/d eps_theta by the term's weight."""
    return (alpha_bar / (1.0 - alpha_bar)).sqrt().clamp(max=1.0)


# Later options, hashed only when set to something else, so that older runs still resume.
_HASHED_IF_CHANGED = {"id3": {"id_loss_fraction": 1.0, "id_loss_every": 1}}


def resume_hash(cfg: GeneratorConfig) -> str:
    data = cfg.model_dump(mode="json")
    for key in _RESUMABLE:
        data["train"].pop(key, None)
    for section, defaults in _HASHED_IF_CHANGED.items():
        for key, default in defaults.items():
            if data[section].get(key) == default:
                data[section].pop(key, None)
    data.pop("sampler", None)
    return config_hash(data)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator of all random draws of one rank's training step."""
    return torch.Generator().manual_seed(segment_seed(seed, rank, step))


def _images_to_tensor(images: list[np.ndarray], size: int) -> torch.Tensor:
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        x = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float() for im in images]
        x = torch.stack(
            [
                F.interpolate(v[None], size=(size, size), mode="bilinear", antialias=True)[0]
                for v in x
            ]
        )
    else:
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x / 127.5 - 1.0


class Batch:
    """Tensors of one training batch (images in [-1,1], unit embeddings, scaled attributes)."""

    def __init__(self, images, identity, attributes, raw_attributes) -> None:
        self.images = images
        self.identity = identity
        self.attributes = attributes
        self.raw_attributes = raw_attributes


def make_batch(samples: Sequence[dict[str, Any]], cfg: GeneratorConfig, encoder) -> Batch:
    names = [a.name for a in cfg.conditioning.attributes]
    scales = np.array([a.scale for a in cfg.conditioning.attributes], dtype=np.float32)
    images = [s["image"] for s in samples]
    for s in samples:
        im = s["image"]
        if not (isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] == 3):
            raise InputError(f"sample {s.get('__key__')!r}: image must be HxWx3 uint8")
    if cfg.data.use_cached_embeddings:
        embs = []
        for s in samples:
            e = s.get("embedding")
            if e is None:
                raise InputError(
                    f"sample {s.get('__key__')!r}: no cached embedding (.npy) but "
                    "data.use_cached_embeddings is true"
                )
            embs.append(np.asarray(e, dtype=np.float32).reshape(-1))
        identity = torch.from_numpy(np.stack(embs))
    else:
        shapes = {im.shape for im in images}
        if len(shapes) == 1:
            identity = torch.from_numpy(encoder.embed_uint8(np.stack(images)))
        else:
            identity = torch.from_numpy(
                np.concatenate([encoder.embed_uint8(im[None]) for im in images])
            )
    if identity.shape[1] != cfg.conditioning.identity_dim:
        raise InputError(
            f"identity embeddings have dimension {identity.shape[1]}, the generator expects "
            f"conditioning.identity_dim={cfg.conditioning.identity_dim}"
        )
    if not torch.isfinite(identity).all():
        raise InputError("identity embeddings of the batch contain NaN or infinite values")
    raw = np.array(
        [attribute_row(s.get("meta") or {}, names, s.get("__key__", "?")) for s in samples],
        dtype=np.float32,
    ).reshape(len(samples), len(names))
    attrs = torch.from_numpy(raw / scales) if names else None
    return Batch(_images_to_tensor(images, cfg.image_size), identity, attrs, raw)


def training_loss(
    model,
    autoencoder,
    encoder,
    batch: Batch,
    cfg: GeneratorConfig,
    gen: torch.Generator,
    *,
    scheduler,
    use_identity_loss: bool,
    autocast=None,
    step: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch's loss; all randomness comes from ``gen``.

    ``step`` (the optimizer step) decides whether the identity term applies this step
    (``id3.id_loss_every``); ``id3.id_loss_fraction`` limits it to part of the batch.
    """
    device = next(model.parameters()).device
    n = batch.images.shape[0]
    T = cfg.diffusion.num_train_timesteps
    images = batch.images
    if cfg.data.hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        images = torch.where(flip.view(n, 1, 1, 1), images.flip(-1), images)
    t = torch.randint(0, T, (n,), generator=gen)
    drop = torch.rand(n, generator=gen) < cfg.conditioning.p_uncond
    # Generator-specific per-step draws (UIFace: the element-wise context dropout mask).
    hook = getattr(getattr(model, "module", model), "training_extras", None)
    extras = hook(n, gen) if hook is not None else {}
    images, t, drop = images.to(device), t.to(device), drop.to(device)
    x0 = autoencoder.encode(images, generator=gen)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    xt = scheduler.add_noise(x0, noise, t)
    identity = batch.identity.to(device)
    attrs = None if batch.attributes is None else batch.attributes.to(device)

    def ctx():
        return autocast() if autocast is not None else nullcontext()

    with ctx():
        eps = model(xt, t, identity=identity, attributes=attrs, drop=drop, **extras)
    eps = eps.float()
    mse = F.mse_loss(eps, noise)
    parts = {"mse": float(mse.detach())}
    loss = mse
    if use_identity_loss and step % cfg.id3.id_loss_every == 0:
        # only the first m samples are decoded and embedded (the costly part in latent space)
        m = max(1, math.ceil(cfg.id3.id_loss_fraction * n))
        ab = scheduler.alphas_cumprod.to(device)[t[:m]].view(m, 1, 1, 1)
        x0_hat = (xt[:m] - (1 - ab).sqrt() * eps[:m]) / ab.sqrt()
        lam = identity_weight(t[:m], T)
        with ctx():
            image_hat = autoencoder.decode(x0_hat)
            if cfg.id3.identity_term == "clipped_snr":
                image_hat = image_hat.clamp(-1.0, 1.0)
                lam = lam * snr_cap(ab.view(m))
            emb = encoder(image_hat)
        cos = (emb.float() * F.normalize(identity[:m].float(), dim=1)).sum(1)
        keep = (~drop[:m]).float()
        id_term = (lam * (1 - cos) * keep).sum() / m
        loss = loss + cfg.id3.id_loss_weight * id_term
        parts["id"] = float(id_term.detach())
        parts["cos"] = float((cos.detach() * keep).sum() / keep.sum().clamp(min=1))
    parts["loss"] = float(loss.detach())
    return loss, parts


def _save_checkpoint(
    final: Path,
    cfg: GeneratorConfig,
    raw_model,
    ema: EMA,
    opt,
    prior: AttributePrior | None,
    step: int,
    extras: dict[str, bytes] | None = None,
) -> None:
    """A checkpoint is a complete generator directory (EMA weights) plus ``training/``."""
    with atomic_dir(final) as tmp:
        atomic_write_json(tmp / "config.json", generator_config_json(cfg))
        save_tensors(tmp / "model.safetensors", ema.state_dict())
        if prior is not None and prior.total:
            atomic_write_json(tmp / "attribute_prior.json", prior.to_dict())
        for name, payload in (extras or {}).items():  # the generator's fitted files
            atomic_write_bytes(tmp / name, payload)
        tr = tmp / "training"
        tr.mkdir()
        save_tensors(tr / "raw.safetensors", raw_model.state_dict())
        torch.save(opt.state_dict(), tr / "optimizer.pt")
        state = {
            "step": step,
            "resume_hash": resume_hash(cfg),
            "prior": prior.to_dict() if prior is not None else None,
        }
        atomic_write_json(tr / "state.json", state)


def _require_encoder(cfg: GeneratorConfig, encoder, use_id: bool) -> None:
    if use_id and (encoder is None or not getattr(encoder, "differentiable", False)):
        raise ConfigError(
            "the identity loss needs a differentiable identity encoder (a recognizer "
            "checkpoint or .onnx file in encoder.path). Set id3.id_loss_weight: 0 or use "
            "generator: plain to train without"
        )
    if not cfg.data.use_cached_embeddings and encoder is None:
        raise ConfigError(
            "no identity encoder: set encoder.path (recognizer checkpoint or .onnx) to embed "
            "training images, or data.use_cached_embeddings: true to read the shards' .npy"
        )


def train_generator(
    cfg: GeneratorConfig,
    *,
    data=None,
    encoder=None,
    steps: int | None = None,
    resume: bool = True,
    log: Callable[[dict], None] | None = None,
    resume_allow_partial: bool = False,
) -> dict[str, Any]:
    """Train (or resume) the configured generator; returns the run summary.

    ``data``: a sequence of sample dicts or a ``ShardSource`` (default: ``cfg.data``);
    ``encoder``: the frozen identity encoder (default: loaded from ``cfg.encoder.path``);
    ``steps``: stop after this global step (default ``cfg.train.steps``), e.g. to test
    resumption. A damaged newest checkpoint stops the run naming the file, unless
    ``resume_allow_partial`` lets it fall back to the newest intact one (saying so).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    gen_cls = GENERATORS.get(cfg.generator)
    use_id = bool(gen_cls.uses_identity_loss and cfg.id3.id_loss_weight > 0)
    if encoder is None and cfg.encoder.path is not None:
        from synthface.generators.encoder import load_identity_encoder

        encoder = load_identity_encoder(cfg.encoder.path, differentiable=use_id)
    _require_encoder(cfg, encoder, use_id)
    # First: a loaded autoencoder writes its geometry into cfg, which the resume check hashes.
    autoencoder = build_autoencoder(cfg.autoencoder)
    cfg.check_sizes()
    if data is None:
        data = open_source(cfg)
    tc = cfg.train
    total = min(steps or tc.steps, tc.steps)
    run_dir = Path(tc.output_dir)
    # every file a resume loads is checked before anything is built
    found = find_resume_checkpoint(run_dir, resume_allow_partial) if resume else None
    if not resume:
        refuse_old_checkpoints(run_dir)
    # cpu=True on a machine without CUDA: otherwise accelerate starts no process group
    # and `accelerate launch --num_processes N` trains N unconnected copies. A precision
    # fixed by an earlier run in this process is reset (the process group is kept).
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=tc.mixed_precision)
    device, rank = accelerator.device, accelerator.process_index

    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    model = gen_cls.build_denoiser(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    model, opt = accelerator.prepare(model, opt)
    raw_model = accelerator.unwrap_model(model)
    ema = EMA(raw_model, tc.ema_decay)  # on the device prepare() put the model on
    names = [a.name for a in cfg.conditioning.attributes]
    prior = (
        AttributePrior.empty(names, [a.range for a in cfg.conditioning.attributes])
        if names
        else None
    )
    start = 0
    if found is not None:
        ckpt, state = found
        if state.get("resume_hash") != resume_hash(cfg):
            raise ConfigError(
                f"{ckpt}: checkpoint was trained with a different config; use a new "
                "train.output_dir or restore the config (only train.steps and logging may change)"
            )
        load_weights(raw_model, ckpt / "training" / "raw.safetensors")
        ema.load_state_dict(load_tensors(ckpt / "model.safetensors"))
        opt.load_state_dict(  # torch moves the state to the parameters' device
            torch.load(ckpt / "training" / "optimizer.pt", map_location="cpu", weights_only=True)
        )
        if prior is not None and state.get("prior"):
            prior = AttributePrior.from_dict(state["prior"])
        start = int(state["step"])
    extras = gen_cls.read_extras(found[0]) if found is not None else {}
    if len(extras) < len(gen_cls.extra_files):
        extras = gen_cls.fit_extras(cfg, data)
    if encoder is not None and hasattr(encoder, "to"):
        encoder = encoder.to(device)
    autoencoder = autoencoder.to(device)
    scheduler = make_scheduler("ddpm", cfg.diffusion)
    batches = training_batches(
        data,
        batch_size=tc.batch_size,
        seed=tc.seed,
        start_step=start,
        segment_steps=tc.checkpoint_every,
        rank=rank,
        world_size=accelerator.num_processes,
    )
    model.train()
    history: list[dict] = []
    t0 = time.perf_counter()
    step = start
    for step in range(start, total):
        batch = gen_cls.training_batch(next(batches), cfg, encoder)
        if prior is not None:  # every rank adds every rank's attributes: one prior
            raw = torch.from_numpy(batch.raw_attributes).to(device)
            prior.add(accelerator.gather(raw).cpu().numpy())
        loss, parts = training_loss(
            model,
            autoencoder,
            encoder,
            batch,
            cfg,
            step_generator(tc.seed, step, rank),
            scheduler=scheduler,
            use_identity_loss=use_id,
            autocast=accelerator.autocast,
            step=step,
        )
        if not torch.isfinite(loss):
            raise InputError(f"training loss became {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        ema.update(raw_model, step)
        parts["step"] = step + 1
        history.append(parts)
        done = step + 1
        if not accelerator.is_main_process:
            continue
        if log is not None and (done % tc.log_every == 0 or done == total):
            rate = (done - start) / max(time.perf_counter() - t0, 1e-9)
            log({**parts, "steps_per_s": round(rate, 3)})
        if done % tc.checkpoint_every == 0 or done == total:
            _save_checkpoint(
                run_dir / "checkpoints" / f"step-{done:08d}",
                cfg,
                raw_model,
                ema,
                opt,
                prior,
                done,
                extras,
            )
            prune_checkpoints(run_dir, tc.keep_checkpoints)
    final = None
    # A run killed between its last checkpoint and final/ resumes at the end: export then.
    unexported = not (run_dir / "final" / "model.safetensors").is_file()
    if accelerator.is_main_process and total == tc.steps and (start < total or unexported):
        final = run_dir / "final"
        export = gen_cls.build_denoiser(cfg)
        ema.copy_to(export)
        generator = gen_cls(
            cfg,
            denoiser=export,
            autoencoder=autoencoder,
            attribute_prior=prior if prior is not None and prior.total else None,
            extras=extras,
        )
        generator.save_pretrained(final)
        store_identity_region(final, cfg, encoder, data=data)
    accelerator.wait_for_everyone()
    return {"step": max(start, total), "final": final, "history": history}
