"""UIFace sampling ablation on the procedural world: one-stage vs two-stage vs + injection.

1. world train/eval splits, the conditioning recognizer and an independent judge, built
   (or reused from ``--workdir``) with the pieces of ``bench/id3_fidelity.py``;
2. one ``uiface`` generator trained for ``--steps`` with ``configs/generators/uiface_world.yaml``
   (context dropout 0.25, unconditioned 0.2, plain epsilon loss) — reused when
   ``gen_uiface/bench_train.json`` exists;
3. the same generator, seeds and held-out identities (recognizer means of eval-split
   identities never seen in training) sampled three ways:
   ``one_stage`` (plain CFG), ``two_stage`` (adaptive switch, no injection) and
   ``two_stage_injection`` (the reference's procedure, on DPM-Solver++);
4. per setting, from the judge (and the conditioning recognizer): identity consistency
   (mean cos to the identity's anchor), rank-1 among the held-out identities, leave-one-out
   rank-1 among the generated images, and intra-class diversity = 1 - mean pairwise cosine
   of the images of one identity (higher = more varied); plus the switch timesteps.

    python bench/uiface_ablation.py --workdir out/bench/uiface_ablation
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from id3_fidelity import embed_split, metrics, train_recognizer, world

from synthface.generators.base import load_generator
from synthface.generators.config import GeneratorConfig
from synthface.generators.encoder import load_identity_encoder
from synthface.generators.training import train_generator
from synthface.pipeline.config import load_config

SETTINGS = {
    "one_stage": {"two_stage": False, "injection": False},
    "two_stage": {"two_stage": True, "injection": False},
    "two_stage_injection": {"two_stage": True, "injection": True},
}


def intra_class_diversity(encoder, images: np.ndarray, labels: np.ndarray) -> float:
    """1 - mean pairwise cosine among the images of each identity, averaged."""
    e = np.concatenate(
        [encoder.embed_uint8(images[i : i + 256]) for i in range(0, len(images), 256)]
    )
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    out = []
    for c in np.unique(labels):
        v = e[labels == c]
        s = v @ v.T
        k = len(v)
        out.append(1.0 - (s.sum() - k) / (k * (k - 1)))
    return round(float(np.mean(out)), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="out/bench/uiface_ablation")
    ap.add_argument("--config", default="configs/generators/uiface_world.yaml")
    ap.add_argument("--identities", type=int, default=800)
    ap.add_argument("--per-identity", type=int, default=4)
    ap.add_argument("--world-size", type=int, default=64)
    ap.add_argument("--recognizer", help="world-trained recognizer dir (default: train one)")
    ap.add_argument("--recognizer-steps", type=int, default=300)
    ap.add_argument("--judge", help="independent recognizer dir (default: train one)")
    ap.add_argument("--judge-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=800, help="generator training steps")
    ap.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    ap.add_argument("--eval-identities", type=int, default=40)
    ap.add_argument("--eval-per-identity", type=int, default=8)
    ap.add_argument("--sampler", default=None, help="override sampler.name")
    ap.add_argument("--sample-steps", type=int, default=None, help="override sampler.steps")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    size = args.world_size
    train_dir = world(work, args.identities, args.per_identity, size, "train")
    eval_dir = world(work, args.eval_identities, args.eval_per_identity, size, "eval")
    base = load_config(args.config, GeneratorConfig)
    dim = base.conditioning.identity_dim
    rec = args.recognizer or str(
        train_recognizer(work, train_dir, size, args.recognizer_steps, dim)
    )
    judge_dir = args.judge or str(
        train_recognizer(
            work,
            train_dir,
            size,
            args.judge_steps,
            dim,
            name="judge_run",
            params={"widths": [24, 48, 96, 192]},
            head="cosface",
            seed=1,
        )
    )
    encoder = load_identity_encoder(rec)
    judge = load_identity_encoder(judge_dir)
    results: dict = {"recognizer": rec, "judge": judge_dir, "settings": SETTINGS}

    e, lab = embed_split(encoder, eval_dir, "eval")
    anchors = np.stack([e[lab == i].mean(0) for i in range(args.eval_identities)])
    anchors = (anchors / np.linalg.norm(anchors, axis=1, keepdims=True)).astype(np.float32)
    je, jlab = embed_split(judge, eval_dir, "eval")
    judge_anchors = np.stack([je[jlab == i].mean(0) for i in range(args.eval_identities)])
    from synthface.pipeline.shards import iter_samples

    real = np.stack([s["image"] for s in iter_samples(eval_dir, split="eval")])
    results["real_eval_images"] = {
        **metrics(encoder, real, lab, anchors),
        "judge": {
            **metrics(judge, real, lab, judge_anchors),
            "intra_class_diversity": intra_class_diversity(judge, real, lab),
        },
    }

    cfg = base.model_copy(deep=True)
    cfg.encoder.path = rec
    cfg.data.path = str(train_dir)
    cfg.train.steps = args.steps
    if args.batch_size:
        cfg.train.batch_size = args.batch_size
    cfg.train.checkpoint_every = max(1, min(cfg.train.checkpoint_every, args.steps))
    cfg.train.log_every = max(1, args.steps // 20)
    cfg.train.output_dir = str(work / "gen_uiface")
    info = Path(cfg.train.output_dir) / "bench_train.json"
    if info.is_file():
        trained = json.loads(info.read_text())
    else:
        t0 = time.perf_counter()
        out = train_generator(cfg, encoder=encoder, log=lambda r: print("train", r, flush=True))
        trained = {
            "train_seconds": round(time.perf_counter() - t0, 1),
            "steps": args.steps,
            "final_mse": out["history"][-1]["mse"] if out["history"] else None,
        }
        info.write_text(json.dumps(trained))
    results["training"] = trained
    gen = load_generator(Path(cfg.train.output_dir) / "final")
    conds = gen.dataset_conditions(anchors, args.eval_per_identity, seed=1)
    ident = conds["identity"].reshape(-1, anchors.shape[1])
    seeds = conds["seeds"].reshape(-1).tolist()
    labels = np.repeat(np.arange(len(anchors)), args.eval_per_identity)
    for name, options in SETTINGS.items():
        meta: list[dict] = []
        t0 = time.perf_counter()
        images = gen.generate(
            ident,
            None,
            seeds,
            sampler=args.sampler,
            steps=args.sample_steps,
            sampler_options=options,
            sample_meta=meta,
        )
        row = {
            **metrics(encoder, images, labels, anchors),
            "sample_seconds": round(time.perf_counter() - t0, 1),
            "judge": {
                **metrics(judge, images, labels, judge_anchors),
                "intra_class_diversity": intra_class_diversity(judge, images, labels),
            },
        }
        if options["two_stage"]:
            ts = np.array([m["uiface"]["switch_timestep"] for m in meta], dtype=float)
            adaptive = np.array([m["uiface"]["adaptive"] for m in meta])
            row["switch"] = {
                "adaptive_share": round(float(adaptive.mean()), 4),
                "timestep_mean": round(float(ts.mean()), 1),
                "timestep_min": int(ts.min()),
                "timestep_max": int(ts.max()),
            }
        results[name] = row
        np.save(work / f"samples_{name}.npy", images[: 8 * args.eval_per_identity])
        print(name, json.dumps(row), flush=True)
    results["total_seconds"] = round(time.perf_counter() - t_all, 1)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
