"""ID³ vs the plain conditional baseline on the procedural face world (CPU, <= ~20 min).

1. world train split (shards) and a world-trained recognizer (``--recognizer`` or a small
   one trained here through ``synthface.recognition.training``), which is the frozen identity
   encoder for the ID³ loss/guidance and the first judge afterwards;
2. the same denoiser trained twice for ``--steps`` steps: ``id3`` (identity term) and
   ``plain`` (denoising only);
3. held-out identities: the recognizer's mean embeddings of *eval-split* world identities
   (never seen in training), or Tammes anchors with ``--anchors tammes`` (whole sphere)
   or ``--anchors data`` (packed inside the training identities' region,
   ``anchors_within``); ``--per-identity`` images each, conditions at cosine U[lb, ub]
   around the anchor, attributes from the prior;
4. metrics from the recognizer: identity consistency = mean cos(f(image), anchor); rank-1
   = share of images whose nearest anchor is their own (chance = 1 / identities); and
   leave-one-out rank-1 among the generated images (nearest class centroid, probe excluded);
5. the same metrics from an independent *judge* (``--judge``, or a wider tiny iResNet
   trained here with CosFace, another seed and the generators' training images), anchored
   on its own embeddings of the held-out real images: ID³ optimises its images against
   the conditioning recognizer, whose scores therefore cannot tell faces from adversarial
   shortcuts; a judge it never saw can.

Generators already trained in ``--workdir`` (``gen_*/bench_train.json``) are reused.

    python bench/id3_fidelity.py --workdir out/bench/id3_fidelity
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from synthface.generators.base import load_generator
from synthface.generators.config import GeneratorConfig
from synthface.generators.encoder import load_identity_encoder
from synthface.generators.id3.anchors import anchors_within, tammes_anchors
from synthface.generators.training import train_generator


def world(work: Path, identities: int, per_identity: int, size: int, split: str) -> Path:
    from synthface.pipeline.world import make_world_dataset

    out = work / f"world_{split}_{identities}x{per_identity}"
    make_world_dataset(
        out, identities=identities, per_identity=per_identity, size=size, split=split
    )
    return out


def train_recognizer(
    work: Path,
    data: Path,
    size: int,
    steps: int,
    dim: int,
    *,
    name: str = "recognizer_run",
    backbone: str = "tiny",
    params: dict | None = None,
    head: str = "arcface",
    seed: int = 0,
) -> Path:
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.training.loop import train

    model_dir = work / name / "model"
    if (model_dir / "config.json").is_file():
        return model_dir
    cfg = TrainConfig.model_validate(
        {
            "data": {"train": str(data), "batch_size": 64, "num_workers": 0},
            "model": {
                "backbone": backbone,
                "input_size": size,
                "embedding_dim": dim,
                "params": params or {},
            },
            # the recipe behind the numbers in docs/benchmarks.md (not arcface_torch's)
            "head": {
                "name": head,
                "params": {"formulation": "threshold"} if head == "arcface" else {},
            },
            "optim": {
                "name": "adamw",
                "lr": 2e-3,
                "weight_decay": 5e-4,
                "decay_norm_and_bias": False,
            },
            "schedule": {"kind": "cosine"},
            "train": {
                "output_dir": str(work / name),
                "max_steps": steps,
                "device": "cpu",
                "seed": seed,
            },
            "checkpoint": {"every_steps": 0},
        }
    )
    result = train(cfg)
    return Path(getattr(result, "model_dir", model_dir))


def embed_split(encoder, data: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from synthface.pipeline.shards import iter_samples

    embs, labels, buf, lab = [], [], [], []
    for s in iter_samples(data, split=split):
        buf.append(s["image"])
        lab.append(s["label"])
        if len(buf) == 256:
            embs.append(encoder.embed_uint8(np.stack(buf)))
            labels += lab
            buf, lab = [], []
    if buf:
        embs.append(encoder.embed_uint8(np.stack(buf)))
        labels += lab
    return np.concatenate(embs), np.array(labels)


def metrics(encoder, images: np.ndarray, labels: np.ndarray, anchors: np.ndarray | None) -> dict:
    """Anchor metrics (when ``anchors`` live in ``encoder``'s space) and LOO rank-1."""
    e = np.concatenate(
        [encoder.embed_uint8(images[i : i + 256]) for i in range(0, len(images), 256)]
    )
    out = {}
    if anchors is not None:
        a = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
        sims = e @ a.T
        out["identity_consistency"] = round(float(sims[np.arange(len(e)), labels].mean()), 4)
        out["rank1_vs_anchors"] = round(float((sims.argmax(1) == labels).mean()), 4)
    n = int(labels.max()) + 1
    sums = np.zeros((n, e.shape[1]))
    np.add.at(sums, labels, e)
    counts = np.bincount(labels, minlength=n)
    loo = 0
    for i in range(len(e)):
        cent = sums.copy()
        cent[labels[i]] -= e[i]
        valid = counts.copy()
        valid[labels[i]] -= 1
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-9)
        s = cent @ e[i]
        s[valid == 0] = -np.inf
        loo += int(s.argmax() == labels[i])
    return {**out, "rank1_leave_one_out": round(loo / len(e), 4), "chance": round(1 / n, 4)}


def sheet(work: Path, eval_dir: Path, per_identity: int, rows: int = 8, cols: int = 4) -> Path:
    """PNG: per held-out identity, real images | ID³ | plain (``cols`` of each)."""
    from PIL import Image

    from synthface.pipeline.shards import iter_samples

    real = {}
    for s in iter_samples(eval_dir, split="eval"):
        real.setdefault(s["label"], []).append(s["image"])
    panels = [np.load(work / f"samples_{k}.npy") for k in ("id3_guidance_0", "plain")]
    size = panels[0].shape[1]
    gap = np.full((size, size // 4, 3), 255, np.uint8)
    lines = []
    for i in range(rows):
        r = [np.asarray(Image.fromarray(im).resize((size, size))) for im in real[i][:cols]]
        parts = [np.concatenate(r, 1)]
        for p in panels:
            parts += [gap, np.concatenate(list(p[i * per_identity : i * per_identity + cols]), 1)]
        lines.append(np.concatenate(parts, 1))
    out = work / "samples.png"
    Image.fromarray(np.concatenate(lines, 0)).resize(
        (lines[0].shape[1] * 2, size * rows * 2), Image.NEAREST
    ).save(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="out/bench/id3_fidelity")
    ap.add_argument("--config", default="configs/generators/id3_world.yaml")
    ap.add_argument("--identities", type=int, default=200)
    ap.add_argument("--per-identity", type=int, default=16)
    ap.add_argument("--world-size", type=int, default=64)
    ap.add_argument("--recognizer", help="world-trained recognizer dir (default: train one)")
    ap.add_argument("--recognizer-steps", type=int, default=600)
    ap.add_argument(
        "--judge",
        help="an independent recognizer that scores the images (default: train a wider "
        "tiny iResNet with CosFace and another seed); the conditioning recognizer could "
        "be fooled by images optimised against it, an independent one only by faces",
    )
    ap.add_argument("--judge-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=800, help="training steps per generator")
    ap.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    ap.add_argument("--eval-identities", type=int, default=40)
    ap.add_argument("--eval-per-identity", type=int, default=8)
    ap.add_argument("--anchors", choices=["world", "tammes", "data"], default="world")
    ap.add_argument(
        "--id-guidance-scales",
        type=lambda t: [float(v) for v in t.split(",")],
        default=[0.0, 3.0],
        help="identity guidance scales to evaluate ID³ at (comma-separated)",
    )
    ap.add_argument(
        "--generators",
        type=lambda t: t.split(","),
        default=["id3", "plain"],
        help="generators to train and score (comma-separated)",
    )
    ap.add_argument(
        "--identity-term",
        choices=["clipped_snr", "raw"],
        help="override id3.identity_term (what the identity loss sees; default: the config's)",
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tag = "" if args.anchors == "world" else f"_{args.anchors}"  # keep both runs' outputs
    t_all = time.perf_counter()

    train_dir = world(work, args.identities, args.per_identity, args.world_size, "train")
    eval_dir = world(work, args.eval_identities, args.eval_per_identity, args.world_size, "eval")
    from synthface.pipeline.config import load_config

    base = load_config(args.config, GeneratorConfig)
    rec = args.recognizer or str(
        train_recognizer(
            work, train_dir, args.world_size, args.recognizer_steps, base.conditioning.identity_dim
        )
    )
    encoder = load_identity_encoder(rec)
    judge_dir = args.judge or str(
        train_recognizer(
            work,
            train_dir,
            args.world_size,
            args.judge_steps,
            base.conditioning.identity_dim,
            name="judge_run",
            params={"widths": [24, 48, 96, 192]},
            head="cosface",
            seed=1,
        )
    )
    judge = load_identity_encoder(judge_dir)
    results: dict = {"recognizer": rec, "judge": judge_dir, "anchors": args.anchors}
    size = args.world_size
    dim = encoder.embed_uint8(np.zeros((1, size, size, 3), np.uint8)).shape[1]
    base.conditioning.identity_dim = dim  # follow the recognizer's embedding size
    # held-out identities
    if args.anchors == "world":
        e, lab = embed_split(encoder, eval_dir, "eval")
        anchors = np.stack([e[lab == i].mean(0) for i in range(args.eval_identities)])
    elif args.anchors == "data":  # packed inside the training identities' region
        e, lab = embed_split(encoder, train_dir, "train")
        centroids = np.stack([e[lab == i].mean(0) for i in np.unique(lab)])
        anchors = anchors_within(centroids, args.eval_identities, iterations=100).numpy()
        # Near the data is not a copy of it: each anchor's nearest training identity vs
        # the training identities' own nearest neighbours.
        c = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        own = c @ c.T
        np.fill_diagonal(own, -1.0)
        results["anchor_novelty"] = {
            "anchor_to_nearest_training_identity_cos": {
                "mean": round(float((anchors @ c.T).max(1).mean()), 4),
                "max": round(float((anchors @ c.T).max()), 4),
            },
            "training_identity_nearest_neighbour_cos": {
                "mean": round(float(own.max(1).mean()), 4),
                "p95": round(float(np.percentile(own.max(1), 95)), 4),
            },
        }
    else:
        anchors = tammes_anchors(args.eval_identities, dim, iterations=100).numpy()
    anchors = (anchors / np.linalg.norm(anchors, axis=1, keepdims=True)).astype(np.float32)
    if args.anchors == "world":  # reference: the held-out identities' real images
        from synthface.pipeline.shards import iter_samples

        real = np.stack([s["image"] for s in iter_samples(eval_dir, split="eval")])
        results["real_eval_images"] = metrics(encoder, real, lab, anchors)
        # The judge's anchors: its own mean embeddings of the same held-out real images.
        je, jlab = embed_split(judge, eval_dir, "eval")
        judge_anchors = np.stack([je[jlab == i].mean(0) for i in range(args.eval_identities)])
        results["real_eval_images"]["judge"] = metrics(judge, real, lab, judge_anchors)

    for name in args.generators:
        cfg = base.model_copy(deep=True)
        cfg.generator = name
        if args.identity_term:
            cfg.id3.identity_term = args.identity_term
        cfg.encoder.path = rec
        cfg.data.path = str(train_dir)
        cfg.data.source = "shards"
        cfg.train.steps = args.steps
        if args.batch_size:
            cfg.train.batch_size = args.batch_size
        cfg.train.checkpoint_every = args.steps
        cfg.train.log_every = max(1, args.steps // 10)
        cfg.train.output_dir = str(work / f"gen_{name}")
        info = Path(cfg.train.output_dir) / "bench_train.json"
        if info.is_file():  # trained by an earlier run of this bench: reuse it
            out = json.loads(info.read_text())
        else:
            t0 = time.perf_counter()
            out = train_generator(
                cfg, encoder=encoder, log=lambda r, n=name: print(n, r, flush=True)
            )
            out = {
                "train_seconds": round(time.perf_counter() - t0, 1),
                "final_train_cos": out["history"][-1].get("cos") if out["history"] else None,
            }
            info.write_text(json.dumps(out))
        gen = load_generator(Path(cfg.train.output_dir) / "final", encoder=encoder)
        conds = gen.dataset_conditions(anchors, args.eval_per_identity, seed=1)
        d = anchors.shape[1]
        labels = np.repeat(np.arange(len(anchors)), args.eval_per_identity)
        scales = args.id_guidance_scales if name == "id3" else [0.0]
        for scale in scales:
            t0 = time.perf_counter()
            images = gen.generate(
                conds["identity"].reshape(-1, d),
                conds["attributes"].reshape(len(anchors) * args.eval_per_identity, -1),
                conds["seeds"].reshape(-1).tolist(),
                id_guidance_scale=scale,
            )
            key = name if name == "plain" else f"{name}_guidance_{scale:g}"
            results[key] = {
                **metrics(encoder, images, labels, anchors),
                "sample_seconds": round(time.perf_counter() - t0, 1),
                "steps": args.steps,
                "identity_term": cfg.id3.identity_term if name != "plain" else None,
                **out,
            }
            # Without real images of the identities the judge has no anchors: LOO only.
            ja = judge_anchors if args.anchors == "world" else None
            results[key]["judge"] = metrics(judge, images, labels, ja)
            np.save(work / f"samples_{key}{tag}.npy", images[: 8 * args.eval_per_identity])
            print(key, json.dumps(results[key]), flush=True)
    if args.anchors == "world" and {"id3", "plain"} <= set(args.generators):
        results["sheet"] = str(sheet(work, eval_dir, args.eval_per_identity))
    results["total_seconds"] = round(time.perf_counter() - t_all, 1)
    (work / f"results{tag}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
