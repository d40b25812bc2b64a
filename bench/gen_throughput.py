"""Sampling throughput: the reference procedure vs ours, same UNet, same seeds.

Reference (UIFace's sampler): fp32, DDIM 50 steps, conditional and unconditional passes
as two UNet calls per step. Ours: batched classifier-free guidance (one call on 2N),
DPM-Solver++(2M) with fewer steps, and on a GPU bf16 autocast, SDPA attention (diffusers'
default processor) and optionally ``torch.compile``.

Presets: ``cpu-tiny`` (a small pixel-space UNet, runs anywhere) and ``gpu-uiface`` (a
~225M-parameter UNet on 3x32x32 latents, UIFace's size). Without ``--checkpoint`` the
weights are random: the numbers are then pure throughput. With ``--checkpoint`` and
``--encoder`` the mean cosine between each image's embedding and its condition is also
printed for both procedures, to check that the faster solver keeps identity consistency.

    python bench/gen_throughput.py --preset cpu-tiny
    python bench/gen_throughput.py --preset gpu-uiface --device cuda --compile
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from synthface.generators.base import create_generator, load_generator
from synthface.generators.config import GeneratorConfig

PRESETS = {
    "cpu-tiny": {
        "image_size": 32,
        "unet": {
            "block_out_channels": [32, 64, 64],
            "cross_attention_levels": [False, True, True],
            "norm_num_groups": 8,
            "cross_attention_dim": 64,
            "attention_head_dim": 4,
        },
        "conditioning": {"identity_dim": 512, "identity_tokens": 4},
    },
    "gpu-uiface": {
        "image_size": 128,
        "autoencoder": {"kind": "vq", "latent_channels": 3, "block_out_channels": [128, 256, 512]},
        "unet": {
            "block_out_channels": [256, 512, 512, 512],
            "cross_attention_levels": [False, True, True, True],
            "layers_per_block": 2,
            "norm_num_groups": 32,
            "cross_attention_dim": 256,
            "attention_head_dim": 8,
        },
        "conditioning": {"identity_dim": 512, "identity_tokens": 8},
    },
}


def run(gen, ident, attrs, seeds, *, decode: bool, **kw) -> tuple[float, np.ndarray | None]:
    dev = gen.device
    if not decode:  # time the diffusion only (the autoencoder is the same for both)
        ae, gen.autoencoder.model = gen.autoencoder.model, None
    try:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = gen.generate(ident, attrs, seeds, return_float=True, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out
    finally:
        if not decode:
            gen.autoencoder.model = ae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ref-steps", type=int, default=50)
    ap.add_argument("--our-steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (ours)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for ours (GPU)")
    ap.add_argument("--checkpoint", help="trained generator directory instead of random weights")
    ap.add_argument("--encoder", help="recognizer for the identity-consistency check")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference is true fp32
        torch.backends.cudnn.allow_tf32 = False

    if args.checkpoint:
        gen = load_generator(args.checkpoint, device=args.device)
    else:
        torch.manual_seed(0)
        cfg = GeneratorConfig.model_validate({"generator": "plain", **PRESETS[args.preset]})
        gen = create_generator("plain", cfg, device=args.device)
    cfg = gen.config
    params = sum(p.numel() for p in gen.denoiser.parameters()) / 1e6
    rng = np.random.default_rng(0)
    ident = rng.standard_normal((args.images, cfg.conditioning.identity_dim)).astype(np.float32)
    ident /= np.linalg.norm(ident, axis=1, keepdims=True)
    attrs = gen.default_attributes(args.images)
    seeds = list(range(args.images))
    common = dict(guidance_scale=args.guidance, id_guidance_scale=0.0, batch_size=args.batch)
    decode = args.checkpoint is not None

    ref_kw = dict(
        sampler="ddim", steps=args.ref_steps, batched_cfg=False, precision="fp32", **common
    )
    our_kw = dict(
        sampler="dpmpp_2m",
        steps=args.our_steps,
        batched_cfg=True,
        precision="bf16" if args.bf16 else "fp32",
        **common,
    )
    # warm-up (allocator, cuDNN autotune) on one batch each
    run(
        gen,
        ident[: args.batch],
        attrs[: args.batch],
        seeds[: args.batch],
        decode=decode,
        **{**ref_kw, "steps": 2},
    )
    ref_s, ref_out = run(gen, ident, attrs, seeds, decode=decode, **ref_kw)
    if args.compile:
        gen.denoiser.unet = torch.compile(gen.denoiser.unet)
    run(
        gen,
        ident[: args.batch],
        attrs[: args.batch],
        seeds[: args.batch],
        decode=decode,
        **{**our_kw, "steps": 3},
    )
    our_s, our_out = run(gen, ident, attrs, seeds, decode=decode, **our_kw)

    result = {
        "preset": args.checkpoint or args.preset,
        "device": args.device,
        "params_M": round(params, 1),
        "images": args.images,
        "batch": args.batch,
        "reference": {
            "procedure": f"fp32 DDIM-{args.ref_steps}, separate cond/uncond",
            "images_per_s": round(args.images / ref_s, 3),
        },
        "ours": {
            "procedure": f"{'bf16' if args.bf16 else 'fp32'} DPM-Solver++(2M)-{args.our_steps}, "
            f"batched CFG{', compiled' if args.compile else ''}",
            "images_per_s": round(args.images / our_s, 3),
        },
        "speedup": round(ref_s / our_s, 2),
    }
    if args.encoder:
        from synthface.generators.encoder import load_identity_encoder

        enc = load_identity_encoder(args.encoder).to(args.device)
        y = torch.nn.functional.normalize(torch.from_numpy(ident), dim=1).to(args.device)
        with torch.no_grad():
            for name, out in (("reference", ref_out), ("ours", our_out)):
                e = enc(torch.from_numpy(out).to(args.device))
                result[name]["mean_cos_to_condition"] = round(float((e * y).sum(1).mean()), 4)
    print(json.dumps(result, indent=2))
    print(f"speedup (ours / reference images per s): {result['speedup']}x")


if __name__ == "__main__":
    main()
