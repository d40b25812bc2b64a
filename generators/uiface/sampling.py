"""UIFace's two-stage sampling on any diffusers scheduler, both passes in one UNet call.

Reference algorithm (``DDPM.sample_ddim_2stage``, DDIM-50, two UNet calls per step):

* stage 1 (t >= ``switch_bound``): pass A with the empty context; pass B with the empty
  context for samples that have not switched yet and the identity context for those that
  have, its self-attention maps replaced by pass A's. No guidance: eps = eps_B. From pass
  B's cross-attention a spatial map is made per sample (``processors.spatial_map``,
  averaged over layers, min-max normalised); a sample switches for good once its map
  changes by less than ``switch_threshold`` between consecutive steps;
* stage 2: unconditional pass U and identity pass C; C's self-attention maps are U's and
  its cross-attention logits are re-standardised halfway toward U's statistics;
  eps = eps_u + w (eps_c - eps_u).

What this implementation does differently, and why:

* both passes are one batch of one UNet call (``processors.InjectionPlan`` says which row
  takes its attention from which); in stage 1 a sample that has not switched gets no A
  row, because its pass B is then identical to pass A (same input, same context);
* the scheduler is any diffusers scheduler (``sampler.name``), so the map change between
  steps is measured per 20 timesteps (the reference's DDIM-50 spacing): the threshold
  means the same thing at 20 or 50 steps;
* the reference calls its criterion an RMSE but takes the mean of sqrt(squared error),
  i.e. the mean absolute change; that is what we compute;
* with ``two_stage`` off, every step is stage 2 (with or without injection); with
  ``injection`` off as well it is plain classifier-free guidance, identical to the core
  sampler ``synthface.generators.sampling.sample``.

Each sample's switch timestep (the first step at which its identity context was used)
is returned per sample; the dataset writer stores it in the sample's meta.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from synthface.generators.config import DiffusionConfig, SamplerConfig, UIFaceConfig
from synthface.generators.sampling import (
    initial_noise,
    make_scheduler,
    precision_context,
    seed_generators,
    step_kwargs,
)
from synthface.generators.uiface.processors import InjectionPlan, two_stage_processors

REFERENCE_STEP = 20  # timesteps between the reference's DDIM-50 steps


def _normalised(m: torch.Tensor) -> torch.Tensor:
    lo = m.flatten(1).amin(1).view(-1, 1, 1)
    hi = m.flatten(1).amax(1).view(-1, 1, 1)
    return (m - lo) / (hi - lo).clamp_min(1e-12)


def sample_two_stage(
    denoiser,
    context: torch.Tensor,
    seeds: Sequence[int],
    *,
    sampler: SamplerConfig,
    diffusion: DiffusionConfig,
    options: UIFaceConfig,
    shape: tuple[int, int, int],
    precision: str = "fp32",
    batched: bool = True,
    clip_x0: bool = False,
    trace: list | None = None,
) -> tuple[torch.Tensor, list[dict]]:
    """x_0 in UNet space (N,C,H,W), float32, and one meta dict per sample.

    ``batched=False`` runs the two passes of a step as separate UNet calls, pass A for
    every sample, as the reference does (for the throughput baseline and the tests).
    ``trace``, when given, receives ``(timestep, per-sample map change)`` at every stage-1
    comparison (the quantity the threshold is applied to), for diagnostics and tests.
    """
    n = context.shape[0]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} conditions")
    device = context.device
    unet = denoiser.unet
    sched = make_scheduler(sampler.name, diffusion, clip_x0=clip_x0)
    sched.set_timesteps(sampler.steps, device=device)
    gens = seed_generators(seeds)
    x = initial_noise(gens, shape, sched, device)
    null = denoiser.cond.null(n).to(context.dtype)
    w = sampler.guidance_scale
    cfg_on = w != 1.0
    rows = torch.arange(n, device=device)
    switched = torch.zeros(n, dtype=torch.bool, device=device)
    first_t: list[int | None] = [None] * n
    prev_map, prev_t = None, None
    autocast = precision_context(device, precision)
    step_kw = step_kwargs(sampler, gens)

    def mark(mask: torch.Tensor, t: int) -> None:
        for i in torch.nonzero(mask).flatten().tolist():
            if first_t[i] is None:
                first_t[i] = t

    def call(inp: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, plan: InjectionPlan):
        holder.plan = plan
        with autocast:
            return unet(inp, t.expand(inp.shape[0]), ctx).float()

    with two_stage_processors(unet) as holder, torch.no_grad():
        for t in sched.timesteps:
            ti = int(t)
            xin = sched.scale_model_input(x, t)
            if options.two_stage and ti >= options.switch_bound:
                mark(switched, ti)
                ctx_b = torch.where(switched.view(-1, 1), context, null)
                plan = InjectionPlan(capture_rows=rows, map_size=shape[-1])
                src = torch.nonzero(switched).flatten()
                if not options.injection:
                    eps = call(xin, t, ctx_b, plan)
                elif batched:
                    # rows 0..n-1: pass B; rows n..: pass A, only for switched samples
                    # (for the others pass B has the same input and context as pass A)
                    qk = torch.arange(n + src.numel(), device=device)
                    qk[src] = n + torch.arange(src.numel(), device=device)
                    plan.qk_source = qk
                    inp = torch.cat([xin, xin[src]])
                    eps = call(inp, t, torch.cat([ctx_b, null[src]]), plan)[:n]
                else:  # the reference: pass A for every sample, then pass B
                    rec = InjectionPlan(record_self=[])
                    call(xin, t, null, rec)
                    plan.replay_self = rec.record_self
                    eps = call(xin, t, ctx_b, plan)
                cur = _normalised(plan.map_sum / plan.map_layers)
                if prev_map is not None:
                    change = (cur - prev_map).abs().mean(dim=(1, 2))
                    change = change * (REFERENCE_STEP / max(prev_t - ti, 1))
                    if trace is not None:
                        trace.append((ti, change.cpu()))
                    switched = switched | (change < options.switch_threshold)
                prev_map, prev_t = cur, ti
            else:
                mark(torch.ones(n, dtype=torch.bool, device=device), ti)
                if not cfg_on:
                    eps = call(xin, t, context, InjectionPlan())
                elif batched:
                    # rows 0..n-1: identity pass C; rows n..2n-1: unconditional pass U
                    plan = InjectionPlan()
                    if options.injection:
                        plan.qk_source = torch.cat([rows + n, rows + n])
                        plan.restandardise_to = torch.cat([rows + n, torch.full_like(rows, -1)])
                    out = call(torch.cat([xin, xin]), t, torch.cat([context, null]), plan)
                    eps_c, eps_u = out.chunk(2)
                    eps = eps_u + w * (eps_c - eps_u)
                else:
                    rec = InjectionPlan()
                    plan = InjectionPlan()
                    if options.injection:
                        rec.record_self, rec.record_cross = [], []
                    eps_u = call(xin, t, null, rec)
                    plan.replay_self, plan.replay_cross = rec.record_self, rec.record_cross
                    eps_c = call(xin, t, context, plan)
                    eps = eps_u + w * (eps_c - eps_u)
            x = sched.step(eps, t, x, **step_kw).prev_sample
    metas = []
    for i in range(n):
        meta = {"switch_timestep": first_t[i]}
        if options.two_stage:
            meta["adaptive"] = first_t[i] is not None and first_t[i] >= options.switch_bound
        metas.append({"uiface": meta})
    return x.float(), metas
