"""UIFace sampling throughput: the reference procedure vs ours, same run, same UNet.

Reference (``sample_ddim_2stage``): fp32, DDIM-50, the two passes of every step as two
separate UNet calls (pass A for every sample in stage 1). Ours: the same two-stage
algorithm with both passes in one batched call (and no pass-A rows for samples that have
not switched), DPM-Solver++(2M) with fewer steps, and on a GPU bf16 autocast and
optionally ``torch.compile``. Both use the same switches (two-stage + injection, the
generator's threshold and bound) and the same seeds.

With ``--workdir`` of ``bench/uiface_ablation.py`` the trained world generator samples the
held-out world identities, and an independent judge (never used in training) scores both
procedures' images: identity consistency (mean cos to the judge's anchor of the identity),
rank-1 and intra-class diversity — the speedup only counts at equal consistency. Without it
``--config`` builds a UNet with random weights (throughput only), e.g. the released
~216M-parameter size (``configs/generators/uiface_128.yaml``, used by
``bench/gpu/uiface_throughput.sh``).

    python bench/uiface_throughput.py --workdir out/bench/uiface_ablation --our-steps 10,20
    python bench/uiface_throughput.py --config configs/generators/uiface_128.yaml --device cuda --bf16 --compile
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from gen_throughput import run
from id3_fidelity import embed_split, metrics
from uiface_ablation import intra_class_diversity

from synthface.generators.base import create_generator, load_generator
from synthface.generators.config import GeneratorConfig
from synthface.generators.encoder import load_identity_encoder
from synthface.pipeline.config import load_config


def world_identities(work: Path, n: int, per: int):
    """Held-out identities of an ablation workdir: contexts, labels, judge and its anchors."""
    eval_dir = next(work.glob("world_eval_*"))
    encoder = load_identity_encoder(str(work / "recognizer_run" / "model"))
    judge = load_identity_encoder(str(work / "judge_run" / "model"))
    e, lab = embed_split(encoder, eval_dir, "eval")
    je, jlab = embed_split(judge, eval_dir, "eval")
    ids = np.unique(lab)[:n]
    anchors = np.stack([e[lab == i].mean(0) for i in ids]).astype(np.float32)
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    judge_anchors = np.stack([je[jlab == i].mean(0) for i in ids])
    return anchors, np.repeat(np.arange(len(ids)), per), judge, judge_anchors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", help="a bench/uiface_ablation.py workdir (trained generator)")
    ap.add_argument("--config", default="configs/generators/uiface_world.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--identities", type=int, default=16)
    ap.add_argument("--per-identity", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ref-steps", type=int, default=50)
    ap.add_argument(
        "--our-steps",
        type=lambda t: [int(v) for v in t.split(",")],
        default=[20],
        help="DPM-Solver++ step counts to measure (comma-separated)",
    )
    ap.add_argument(
        "--our-samplers",
        type=lambda t: t.split(","),
        default=["dpmpp_2m"],
        help="solvers for ours (comma-separated; ddim isolates the solver from the batching)",
    )
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for ours (GPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (ours)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference is true fp32
        torch.backends.cudnn.allow_tf32 = False

    n = args.identities * args.per_identity
    judge = None
    if args.workdir:
        work = Path(args.workdir)
        gen = load_generator(work / "gen_uiface" / "final", device=args.device)
        anchors, labels, judge, judge_anchors = world_identities(
            work, args.identities, args.per_identity
        )
        conds = gen.dataset_conditions(anchors, args.per_identity, seed=1)
        ident = conds["identity"].reshape(n, -1)
        seeds = conds["seeds"].reshape(-1).tolist()
    else:
        torch.manual_seed(0)
        cfg = load_config(args.config, GeneratorConfig)
        cfg.autoencoder.path = None  # random weights: throughput only
        autoencoder = None
        if cfg.autoencoder.kind == "vq":  # the released VQ-f4 architecture, random weights
            from diffusers import VQModel

            from synthface.generators.autoencoder import Autoencoder
            from synthface.generators.uiface.convert import VQ_F4

            autoencoder = Autoencoder(cfg.autoencoder, VQModel(**VQ_F4))
        gen = create_generator("uiface", cfg, autoencoder=autoencoder, device=args.device)
        rng = np.random.default_rng(0)
        ident = rng.standard_normal((n, cfg.conditioning.identity_dim)).astype(np.float32)
        seeds = list(range(n))
    decode = gen.autoencoder.model is not None
    params = sum(p.numel() for p in gen.denoiser.parameters()) / 1e6
    common = dict(batch_size=args.batch, sampler_options={"two_stage": True, "injection": True})
    ref_kw = dict(sampler="ddim", steps=args.ref_steps, batched_cfg=False, precision="fp32")
    b = slice(0, args.batch)

    def score(images: np.ndarray) -> dict:
        if judge is None:
            return {}
        u8 = ((np.clip(images, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        u8 = u8.transpose(0, 2, 3, 1)
        m = metrics(judge, u8, labels, judge_anchors)
        return {
            "judge_identity_consistency": m["identity_consistency"],
            "judge_rank1": m["rank1_vs_anchors"],
            "judge_intra_class_diversity": intra_class_diversity(judge, u8, labels),
        }

    run(gen, ident[b], None, seeds[b], decode=decode, **common, **{**ref_kw, "steps": 2})
    ref_s, ref_out = run(gen, ident, None, seeds, decode=decode, **common, **ref_kw)
    result = {
        "generator": args.workdir or args.config,
        "device": args.device,
        "unet_params_M": round(params, 1),
        "images": n,
        "batch": args.batch,
        "reference": {
            "procedure": f"fp32 DDIM-{args.ref_steps}, two separate UNet calls per step",
            "images_per_s": round(n / ref_s, 3),
            **score(ref_out),
        },
    }
    if args.compile:
        gen.denoiser.unet = torch.compile(gen.denoiser.unet, dynamic=True)
    precision = "bf16" if args.bf16 else "fp32"
    names = {"dpmpp_2m": ("dpmpp", "DPM-Solver++(2M)"), "ddim": ("ddim", "DDIM")}
    for solver, steps in ((s, n_) for s in args.our_samplers for n_ in args.our_steps):
        our_kw = dict(sampler=solver, steps=steps, batched_cfg=True, precision=precision)
        run(gen, ident[b], None, seeds[b], decode=decode, **common, **{**our_kw, "steps": 3})
        our_s, our_out = run(gen, ident, None, seeds, decode=decode, **common, **our_kw)
        short, label = names[solver]
        result[f"ours_{short}_{steps}"] = {
            "procedure": f"{precision} {label}-{steps}, passes batched in one call"
            + (", compiled" if args.compile else ""),
            "images_per_s": round(n / our_s, 3),
            "speedup": round(ref_s / our_s, 2),
            **score(our_out),
        }
    print(json.dumps(result, indent=2))
    for key, row in result.items():
        if key.startswith("ours_"):
            print(f"{key}: speedup {row['speedup']}x over the reference procedure")


if __name__ == "__main__":
    main()
