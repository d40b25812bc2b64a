"""Why DPM-Solver++ and DDIM give different UIFace images in pixel space: x0 clipping.

diffusers' DDIM clips the x0 prediction but keeps the network's raw epsilon for the
direction term; DPM-Solver++ (data prediction) effectively re-derives epsilon from the
clipped x0. This probe samples the trained world generator of a ``bench/uiface_ablation.py``
workdir (two stage + injection, 20 steps) three ways and scores each with the independent
judge: DDIM and DPM-Solver++ without any clipping, and DDIM with
``use_clipped_model_output=True`` (epsilon re-derived from the clipped x0). Compare with
``bench/uiface_throughput.py --our-samplers ddim,dpmpp_2m`` (both clipped, the default).

    OMP_NUM_THREADS=1 python bench/uiface_clipping.py --workdir out/bench/uiface_ablation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from id3_fidelity import metrics
from uiface_ablation import intra_class_diversity
from uiface_throughput import world_identities

import synthface.generators.uiface.sampling as sampling
from synthface.generators.base import load_generator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="out/bench/uiface_ablation")
    ap.add_argument("--identities", type=int, default=16)
    ap.add_argument("--per-identity", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.workdir)
    gen = load_generator(work / "gen_uiface" / "final")
    anchors, labels, judge, judge_anchors = world_identities(
        work, args.identities, args.per_identity
    )
    conds = gen.dataset_conditions(anchors, args.per_identity, seed=1)
    n = len(labels)
    ident = torch.from_numpy(conds["identity"].reshape(n, -1))
    seeds = conds["seeds"].reshape(-1).tolist()
    cfg = gen.config
    shape = (cfg.sample_channels, cfg.sample_size, cfg.sample_size)
    make = sampling.make_scheduler

    def run(name: str, clip: bool, clipped_eps: bool = False) -> dict:
        def scheduler(*a, **kw):  # the probe's one change: DDIM's clipped-epsilon step
            s = make(*a, **kw)
            if clipped_eps:
                step = s.step
                s.step = lambda *sa, **sk: step(*sa, use_clipped_model_output=True, **sk)
            return s

        sampler = cfg.sampler.model_copy(update={"name": name, "steps": args.steps})
        sampling.make_scheduler = scheduler
        try:
            out = []
            for b in range(0, n, args.batch):
                with torch.no_grad():
                    ctx = gen.denoiser.cond(ident[b : b + args.batch], None)
                x, _ = sampling.sample_two_stage(
                    gen.denoiser, ctx, seeds[b : b + args.batch], sampler=sampler,
                    diffusion=cfg.diffusion, options=cfg.uiface, shape=shape, clip_x0=clip,
                )  # fmt: skip
                out.append(x)
        finally:
            sampling.make_scheduler = make
        u8 = ((torch.cat(out).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        m = metrics(judge, u8, labels, judge_anchors)
        return {
            "judge_identity_consistency": round(m["identity_consistency"], 4),
            "judge_rank1": round(m["rank1_vs_anchors"], 4),
            "judge_intra_class_diversity": round(intra_class_diversity(judge, u8, labels), 4),
        }

    rows = {
        f"ddim_{args.steps}_no_clipping": run("ddim", False),
        f"dpmpp_{args.steps}_no_clipping": run("dpmpp_2m", False),
        f"ddim_{args.steps}_clipped_x0_rederived_eps": run("ddim", True, clipped_eps=True),
    }
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
