"""MorphFace on the procedural face world: style adherence, identity under style change.

Uses the pieces of ``bench/id3_fidelity.py`` (world shards, recognizer training, identity
metrics) and adds:

1. a **style regressor**: a small CNN trained on the world's real training images (at the
   generators' resolution) to predict their ground-truth pose, expression and lighting
   coefficients; its error on held-out real images is the reference;
2. generators trained on the same shards for the same steps and batch size: ``morphface``
   (context blending by timestep), ``morphface_noblend`` (the ablation: one joint
   cross-attention) and ``id3``;
3. held-out identities (40 eval-split world identities, anchor = the conditioning
   recognizer's mean embedding of their real images), 8 images each:
   * **style adherence**: the regressor's error between the requested and the recovered
     coefficients of generated images (MorphFace requests all of pose, expression and
     lighting; ID³ conditions on pose only, so only its pose is scored);
   * **identity consistency** by an independent judge (a recognizer the generators never
     saw): the id3 bench's metrics, plus the mean judge cosine between two images of one
     identity whose requested yaw differs by less than 15 or more than 40 degrees;
   * the ablation **without the subject-aware prior**: the same MorphFace model, every
     image's style drawn independently from the pooled distribution;
4. **new identities**: MorphFace on identities from its own empty-context faces, kept
   apart by the margins (``novel_identities``), and ID³ on anchors packed inside the
   training identities' region (``anchors_within``); no real images exist for them, so
   the judge can only say whether each identity's images cluster (LOO rank-1, cosines).

Generators already trained in ``--workdir`` (``gen_*/bench_train.json``) are reused.
Run it as a script (``python bench/morphface_fidelity.py``) so that ``id3_fidelity``
imports from this folder.

    nice -n 10 .venv/bin/python bench/morphface_fidelity.py --workdir out/bench/morphface
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from id3_fidelity import embed_split, metrics, train_recognizer, world
from torch import nn

from synthface.generators.base import load_generator
from synthface.generators.config import GeneratorConfig
from synthface.generators.encoder import load_identity_encoder
from synthface.generators.id3.anchors import anchors_within
from synthface.generators.morphface.identities import novel_identities
from synthface.generators.training import train_generator
from synthface.pipeline.atomic import atomic_write_json
from synthface.pipeline.config import load_config

TARGETS = ("yaw", "pitch", "roll", "smile", "mouth_open", "light_az", "light_el")
POSE = ("yaw", "pitch", "roll")


# ----------------------------------------------------------------------------- regressor
def _resize(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] at ``size`` (the generators' own resize)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x / 127.5 - 1.0


class StyleRegressor(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        from synthface.recognition.backbones import create_backbone

        self.trunk = create_backbone("tiny", input_size=size, embedding_dim=64)
        self.head = nn.Linear(64, len(TARGETS))
        self.register_buffer("mean", torch.zeros(len(TARGETS)))
        self.register_buffer("std", torch.ones(len(TARGETS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # standardised targets
        return self.head(self.trunk(x))

    @torch.no_grad()
    def predict(self, images: np.ndarray, size: int) -> np.ndarray:
        self.eval()
        out = [self(_resize(images[i : i + 256], size)) for i in range(0, len(images), 256)]
        return (torch.cat(out) * self.std + self.mean).numpy()


def world_images_and_styles(data: Path, split: str) -> tuple[np.ndarray, np.ndarray, dict]:
    from synthface.pipeline.shards import iter_samples

    images, rows, labels = [], [], []
    for s in iter_samples(data, split=split):
        images.append(s["image"])
        rows.append([s["meta"]["style_coeffs"][k] for k in TARGETS])
        labels.append(s["label"])
    return np.stack(images), np.array(rows, np.float32), {"labels": np.array(labels)}


def train_regressor(work: Path, data: Path, size: int, steps: int) -> StyleRegressor:
    from safetensors.torch import load_file, save_file

    from synthface.pipeline.atomic import atomic_path

    model = StyleRegressor(size)
    path = work / "regressor.safetensors"
    if path.is_file():
        model.load_state_dict(load_file(path))
        return model.eval()
    images, y, _ = world_images_and_styles(data, "train")
    x = _resize(images, size)
    y = torch.from_numpy(y)
    model.mean.copy_(y.mean(0))
    model.std.copy_(y.std(0))
    y = (y - model.mean) / model.std
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 200 == 0:
            print(f"regressor step {step + 1} loss {float(loss):.4f}", flush=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return model.eval()


def adherence(pred: np.ndarray, requested: np.ndarray, names=TARGETS) -> dict:
    """Mean absolute error per coefficient (coefficient units: degrees, 0..1 scales)."""
    return {
        n: round(float(np.abs(pred[:, TARGETS.index(n)] - requested[:, i]).mean()), 4)
        for i, n in enumerate(names)
    }


# ----------------------------------------------------------------------------- identity
def judge_embeddings(judge, images: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [judge.embed_uint8(images[i : i + 256]) for i in range(0, len(images), 256)]
    )


def within_identity(emb: np.ndarray, labels: np.ndarray, yaw: np.ndarray | None) -> dict:
    """Mean cosine of same-identity pairs: all, and by the difference of requested yaw."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos, dyaw = [], []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        s = e[idx] @ e[idx].T
        iu = np.triu_indices(len(idx), 1)
        cos.append(s[iu])
        if yaw is not None:
            dyaw.append(np.abs(yaw[idx][:, None] - yaw[idx][None, :])[iu])
    cos = np.concatenate(cos)
    out = {"within_cos": round(float(cos.mean()), 4)}
    if yaw is not None:
        dyaw = np.concatenate(dyaw)
        for name, sel in (("within_cos_dyaw_lt15", dyaw < 15), ("within_cos_dyaw_gt40", dyaw > 40)):
            out[name] = round(float(cos[sel].mean()), 4) if sel.any() else None
            out[name.replace("within_cos", "pairs")] = int(sel.sum())
    return out


# ----------------------------------------------------------------------------- generators
def train_one(
    name: str,
    generator: str,
    base: GeneratorConfig,
    args,
    work,
    train_dir,
    rec,
    encoder,
    **morphface,
) -> Path:
    cfg = base.model_copy(deep=True)
    cfg.generator = generator
    cfg.encoder.path = rec
    cfg.data.path = str(train_dir)
    cfg.data.source = "shards"
    cfg.train.steps = args.steps
    cfg.train.batch_size = args.batch_size
    cfg.train.checkpoint_every = max(1, args.steps // 4)
    cfg.train.log_every = max(1, args.steps // 20)
    cfg.train.output_dir = str(work / f"gen_{name}")
    for key, value in morphface.items():
        setattr(cfg.morphface, key, value)
    info = Path(cfg.train.output_dir) / "bench_train.json"
    if not info.is_file():
        t0 = time.perf_counter()
        out = train_generator(cfg, encoder=encoder, log=lambda r: print(name, r, flush=True))
        atomic_write_json(
            info,
            {
                "train_seconds": round(time.perf_counter() - t0, 1),
                "steps": args.steps,
                "batch_size": args.batch_size,
                "final_loss": out["history"][-1]["loss"] if out["history"] else None,
            },
        )
    return Path(cfg.train.output_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="out/bench/morphface")
    ap.add_argument("--morphface-config", default="configs/generators/morphface_world.yaml")
    ap.add_argument("--id3-config", default="configs/generators/id3_world.yaml")
    ap.add_argument("--identities", type=int, default=400)
    ap.add_argument("--per-identity", type=int, default=8)
    ap.add_argument("--world-size", type=int, default=32)
    ap.add_argument("--recognizer", help="world-trained recognizer dir (default: train one)")
    ap.add_argument("--recognizer-steps", type=int, default=250)
    ap.add_argument("--judge", help="independent judge recognizer dir (default: train one)")
    ap.add_argument("--judge-steps", type=int, default=250)
    ap.add_argument("--regressor-steps", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1500, help="training steps per generator")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--models", default="morphface,morphface_noblend,id3")
    ap.add_argument("--eval-identities", type=int, default=40)
    ap.add_argument("--eval-per-identity", type=int, default=8)
    ap.add_argument("--no-new-identities", action="store_true")
    ap.add_argument(
        "--train-only",
        action="store_true",
        help="train the --models and stop (e.g. one process per model; evaluate later)",
    )
    ap.add_argument(
        "--results",
        default="results.json",
        help="file name under --workdir (one per process when models are evaluated in parallel)",
    )
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    mf_base = load_config(args.morphface_config, GeneratorConfig)
    id3_base = load_config(args.id3_config, GeneratorConfig)
    size = mf_base.image_size

    train_dir = world(work, args.identities, args.per_identity, args.world_size, "train")
    eval_dir = world(work, args.eval_identities, args.eval_per_identity, args.world_size, "eval")
    dim = mf_base.conditioning.identity_dim
    rec = args.recognizer or str(
        train_recognizer(work, train_dir, args.world_size, args.recognizer_steps, dim)
    )
    encoder = load_identity_encoder(rec)
    models = args.models.split(",")
    runs = {
        "morphface": ("morphface", mf_base, {"blending": "timestep"}),
        "morphface_noblend": ("morphface", mf_base, {"blending": "none"}),
        "morphface_constant": ("morphface", mf_base, {"blending": "constant"}),
        "id3": ("id3", id3_base, {}),
    }
    if args.train_only:
        for name in models:
            generator, base, extra = runs[name]
            train_one(name, generator, base, args, work, train_dir, rec, encoder, **extra)
        return
    judge_dir = args.judge or str(
        train_recognizer(
            work,
            train_dir,
            args.world_size,
            args.judge_steps,
            dim,
            name="judge_run",
            params={"widths": [24, 48, 96, 192]},
            head="cosface",
            seed=1,
        )
    )
    judge = load_identity_encoder(judge_dir)
    regressor = train_regressor(work, train_dir, size, args.regressor_steps)
    results: dict = {"args": vars(args), "recognizer": rec, "judge": judge_dir}

    # held-out identities and the real-image references
    e, lab = embed_split(encoder, eval_dir, "eval")
    anchors = np.stack([e[lab == i].mean(0) for i in range(args.eval_identities)])
    anchors = (anchors / np.linalg.norm(anchors, axis=1, keepdims=True)).astype(np.float32)
    je, jlab = embed_split(judge, eval_dir, "eval")
    judge_anchors = np.stack([je[jlab == i].mean(0) for i in range(args.eval_identities)])
    real, real_y, info = world_images_and_styles(eval_dir, "eval")
    labels = np.repeat(np.arange(args.eval_identities), args.eval_per_identity)
    assert (info["labels"] == labels).all()
    real_row = metrics(judge, real, labels, judge_anchors)
    real_row.update(within_identity(judge_embeddings(judge, real), labels, real_y[:, 0]))
    real_row["style_mae"] = adherence(regressor.predict(real, size), real_y)
    _, train_y, _ = world_images_and_styles(train_dir, "train")
    real_row["style_mae_predict_mean"] = adherence(
        np.tile(train_y.mean(0), (len(real_y), 1)), real_y
    )
    results["real_eval_images"] = real_row
    print("real", json.dumps(real_row), flush=True)
    tr_e, tr_lab = embed_split(encoder, train_dir, "train")
    centroids = np.stack([tr_e[tr_lab == i].mean(0) for i in np.unique(tr_lab)])

    for name in models:
        generator, base, extra = runs[name]
        run = train_one(name, generator, base, args, work, train_dir, rec, encoder, **extra)
        trained = json.loads((run / "bench_train.json").read_text())
        # A run cut short by --steps ends at a checkpoint (a complete generator directory)
        # instead of final/; say which weights were measured.
        if (run / "final").is_dir():
            weights = run / "final"
        else:
            weights = sorted((run / "checkpoints").glob("step-*"))[-1]
        trained["weights"] = str(weights.relative_to(run))
        gen = load_generator(weights, encoder=encoder)
        variants = [(name, {})]
        if name == "morphface":
            variants.append(("morphface_subject_agnostic", {"subject_aware": False}))
        for key, kw in variants:
            conds = gen.dataset_conditions(anchors, args.eval_per_identity, seed=1, **kw)
            n = len(anchors) * args.eval_per_identity
            attrs = conds["attributes"].reshape(n, -1)
            t0 = time.perf_counter()
            images = gen.generate(
                conds["identity"].reshape(n, -1), attrs, conds["seeds"].reshape(-1).tolist()
            )
            row = {
                **metrics(judge, images, labels, judge_anchors),
                **trained,
                "sample_seconds": round(time.perf_counter() - t0, 1),
            }
            names = list(gen.attribute_names)
            asked = TARGETS if generator == "morphface" else POSE
            requested = attrs[:, [names.index(k) for k in asked]]
            yaw = requested[:, 0]
            row.update(within_identity(judge_embeddings(judge, images), labels, yaw))
            row["style_mae"] = adherence(regressor.predict(images, size), requested, asked)
            row["encoder"] = metrics(encoder, images, labels, anchors)
            results[key] = row
            np.save(work / f"samples_{key}.npy", images[: 8 * args.eval_per_identity])
            atomic_write_json(work / args.results, results)  # partial results survive a crash
            print(key, json.dumps(row), flush=True)

        if args.no_new_identities or name not in ("morphface", "id3"):
            continue
        t0 = time.perf_counter()
        if name == "morphface":
            new, stats = novel_identities(
                gen, encoder, args.eval_identities, training=centroids, seed=3
            )
        else:
            new = anchors_within(centroids, args.eval_identities, iterations=100).numpy()
            stats = {}
        conds = gen.dataset_conditions(new, args.eval_per_identity, seed=2)
        n = len(new) * args.eval_per_identity
        attrs = conds["attributes"].reshape(n, -1)
        images = gen.generate(
            conds["identity"].reshape(n, -1), attrs, conds["seeds"].reshape(-1).tolist()
        )
        yaw = attrs[:, list(gen.attribute_names).index("yaw")]
        row = {
            **metrics(judge, images, labels, None),
            **stats,
            **within_identity(judge_embeddings(judge, images), labels, yaw),
            "encoder": metrics(encoder, images, labels, new),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        c = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        row["anchor_to_nearest_training_identity_cos"] = round(float((new @ c.T).max(1).mean()), 4)
        key = f"{name}_new_identities"
        results[key] = row
        np.save(work / f"samples_{key}.npy", images[: 8 * args.eval_per_identity])
        print(key, json.dumps(row), flush=True)
    results["total_seconds"] = round(time.perf_counter() - t_all, 1)
    atomic_write_json(work / args.results, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
