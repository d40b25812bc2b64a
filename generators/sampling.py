"""Reverse diffusion: diffusers schedulers, batched classifier-free guidance, ID³ guidance.

Determinism: every sample owns a ``torch.Generator`` seeded by its own seed; it draws the
initial noise and any per-step noise (DDPM, DDIM with eta > 0) through diffusers'
per-sample generator lists. A sample's trajectory therefore depends on its seed and
conditions only, not on the batch it happens to be in (up to float rounding of batched
matrix products).

Classifier-free guidance runs the conditional and the null-conditioned inputs as ONE
batch of 2N (one UNet call per step instead of two). Identity guidance follows the ID³
adjusted score: grad log p(x_t|y,s) + s * grad cos(f(x0_hat(x_t)), y), which in
epsilon form is eps - s * sqrt(1 - alpha_bar_t) * grad.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

from synthface.generators.config import DiffusionConfig, SamplerConfig
from synthface.pipeline.registry import Registry

SCHEDULERS: Registry = Registry("sampler")


def _common(d: DiffusionConfig) -> dict:
    return dict(
        num_train_timesteps=d.num_train_timesteps,
        beta_schedule=d.beta_schedule,
        beta_start=d.beta_start,
        beta_end=d.beta_end,
        prediction_type="epsilon",
    )


@SCHEDULERS.register("ddpm")
def _ddpm(diffusion: DiffusionConfig, clip_x0: bool = False):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**_common(diffusion), clip_sample=clip_x0)


@SCHEDULERS.register("ddim")
def _ddim(diffusion: DiffusionConfig, clip_x0: bool = False):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**_common(diffusion), clip_sample=clip_x0, set_alpha_to_one=False)


@SCHEDULERS.register("dpmpp_2m")
def _dpmpp(diffusion: DiffusionConfig, clip_x0: bool = False):
    from diffusers import DPMSolverMultistepScheduler

    # Thresholding with sample_max_value 1 is a hard clip of x0 to [-1, 1].
    return DPMSolverMultistepScheduler(
        **_common(diffusion),
        algorithm_type="dpmsolver++",
        solver_order=2,
        thresholding=clip_x0,
        sample_max_value=1.0,
    )


def make_scheduler(name: str, diffusion: DiffusionConfig, *, clip_x0: bool = False):
    """A fresh scheduler (multistep solvers keep state: one instance per sampling run).

    ``clip_x0`` clips each step's x0 prediction to the data range [-1, 1]. In pixel space
    that is what keeps a young model's sampling stable: at t near T, x0_hat divides the
    noise-prediction error by sqrt(alpha_bar) (about 0.006 with the linear schedule), and
    unclipped those excursions saturate the whole trajectory into colour blobs. Latents have no fixed range, so latent-space sampling leaves it off.
    """
    return SCHEDULERS.create(name, diffusion=diffusion, clip_x0=clip_x0)


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample (CPU so that a seed gives the same noise on any device)."""
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def precision_context(device: torch.device, precision: str):
    """bf16 autocast for ``precision == "bf16"``, otherwise nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def step_kwargs(sampler: SamplerConfig, gens: list[torch.Generator]) -> dict:
    """Extra ``scheduler.step`` arguments: eta for DDIM, per-sample generators for noise."""
    kw: dict = {"eta": sampler.eta} if sampler.name == "ddim" else {}
    if sampler.name in ("ddpm", "ddim"):
        kw["generator"] = gens
    return kw


def initial_noise(
    gens: list[torch.Generator], shape: tuple[int, int, int], sched, device
) -> torch.Tensor:
    """x_T, one draw per sample from its own generator (independent of the batch)."""
    x = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
    return x * sched.init_noise_sigma


IdentityScore = Callable[[torch.Tensor], torch.Tensor]
"""x0_hat (N,C,H,W) -> per-sample cos(f(decode(x0_hat)), y) (N,), differentiable."""


def sample(
    denoiser,
    tokens: torch.Tensor,
    seeds: Sequence[int],
    *,
    sampler: SamplerConfig,
    diffusion: DiffusionConfig,
    shape: tuple[int, int, int],
    identity_score: IdentityScore | None = None,
    precision: str = "fp32",
    batched_cfg: bool = True,
    clip_x0: bool = False,
) -> torch.Tensor:
    """Run the reverse process for one batch; returns x_0 in UNet space (N,C,H,W), float32.

    ``batched_cfg=False`` is the reference procedure (two UNet calls per step, as in
    UIFace's sampler); it exists for the throughput benchmark and the equivalence test.
    """
    n = tokens.shape[0]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} conditions")
    device = tokens.device
    sched = make_scheduler(sampler.name, diffusion, clip_x0=clip_x0)
    sched.set_timesteps(sampler.steps, device=device)
    gens = seed_generators(seeds)
    x = initial_noise(gens, shape, sched, device)
    w = sampler.guidance_scale
    cfg_on = w != 1.0
    null = denoiser.cond.null(n).to(tokens.dtype)
    ctx = torch.cat([tokens, null]) if cfg_on else tokens
    alphas = sched.alphas_cumprod.to(device)
    use_id = identity_score is not None and sampler.id_guidance_scale > 0
    full = use_id and sampler.id_guidance_mode == "full"
    autocast = precision_context(device, precision)
    step_kw = step_kwargs(sampler, gens)

    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t)
        with torch.set_grad_enabled(full):
            if full:
                xin = xin.detach().requires_grad_(True)
            tt = t.expand(n).to(device)
            with autocast:
                if cfg_on and batched_cfg:
                    eps_c, eps_u = (
                        denoiser(torch.cat([xin, xin]), tt.repeat(2), ctx).float().chunk(2)
                    )
                elif cfg_on:
                    eps_c = denoiser(xin, tt, tokens).float()
                    eps_u = denoiser(xin, tt, null).float()
                else:
                    eps_c = denoiser(xin, tt, tokens).float()
            eps = eps_u + w * (eps_c - eps_u) if cfg_on else eps_c
            if use_id:
                ab = alphas[int(t)]
                x0_hat = (xin - (1 - ab).sqrt() * eps) / ab.sqrt()
                with torch.enable_grad():
                    if full:
                        target = xin
                    else:
                        x0_hat = x0_hat.detach().requires_grad_(True)
                        target = x0_hat
                    score = identity_score(x0_hat).sum()
                    grad = torch.autograd.grad(score, target)[0]
                if not full:  # d x0_hat / d x_t with eps held constant
                    grad = grad / ab.sqrt()
                eps = eps.detach() - sampler.id_guidance_scale * (1 - ab).sqrt() * grad
        x = sched.step(eps.detach(), t, x, **step_kw).prev_sample
    return x.float()
