"""The training options and SDD-FIQA quality, measured on the procedural face world.

    nice -n 10 .venv/bin/python bench/training_options.py ddl   [--workdir out/bench/options]
    nice -n 10 .venv/bin/python bench/training_options.py ekd
    nice -n 10 .venv/bin/python bench/training_options.py fiqa  [--generate-identities 120]
    nice -n 10 .venv/bin/python bench/training_options.py afa

Every subcommand renders (once, cached in ``--workdir``) a world training set of
``--identities`` x ``--per-identity`` faces at ``--size`` px and the protocols it needs,
trains fresh runs of one recipe that differ only in the option measured, scores them
with the project's evaluation code and prints (and writes ``<workdir>/<cmd>.json``)
one JSON document. The recipe: tiny iResNet, 128-d, CosFace s 16 m 0.2, SGD lr 0.2,
polynomial decay, identity-balanced batches of 64 (16 identities x 4), flip.

* ``ddl``: no DDL / DDL with hard = |yaw| >= 30 / DDL with hard = blur >= 0.8; 10-fold
  accuracy on lfw, cfp-fp (frontal vs 55-75 degree profile) and lowres (1/4 resolution).
* ``ekd``: a teacher (widths 24-192, twice the epochs), and a student (widths 8-64,
  64-d) without and with
  EKD (cached teacher embeddings; batches 32 balanced + 32 random, as EKD's reference);
  TAR at FAR 1e-4 .. 1e-2 over all pairs of held-out identities, and lfw.
* ``fiqa``: pseudo-labels under the ``ddl`` baseline recognizer, a quality regressor
  initialised from it; error-versus-reject curves (FNMR at FMR 1e-3 as the
  lowest-quality genuine comparisons are dropped) for the regressor, the embedding
  norm and a random score, on held-out world identities and on a dataset generated
  with the shipped demo models (scored in QC by the regressor); then recognizers
  trained on that generated set with and without the QC quality filter, verified
  on the world's lfw.
* ``afa``: standard training, plain PGD adversarial training and AFA (examples of
  random strength 0..8/255, PGD-2 while training by default); clean and robust 10-fold accuracy
  under PGD-5 at 2, 4, 8 /255 on lfw pairs, and AFA's mean fusing weight per strength;
  then whether the strength is readable from the features at all (``afa_witness``).

Numbers depend on the machine's load (the runs are long); docs/benchmarks.md records
the machine state of each run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data/demo/models"

RECIPE = {
    "data": {"batch_size": 64, "num_workers": 1, "shuffle_buffer": 5000,
             "sampler": {"kind": "balanced", "per_identity": 4}},
    "model": {"backbone": "tiny", "embedding_dim": 128},
    "head": {"name": "cosface", "params": {"scale": 16.0, "margin": 0.2}},
    "optim": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"kind": "polynomial"},
    "train": {"device": "cpu"},
    "augment": {"flip": {"p": 0.5}},
    "checkpoint": {"every_steps": 0},
    "logging": {"every_steps": 50, "progress": False},
}  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def world(args, name: str, identities: int, per_identity: int, split: str = "train") -> Path:
    from synthface.pipeline.world import make_world_dataset

    path = Path(args.workdir) / f"{name}-{args.size}"
    if not (path / "dataset.json").is_file():
        log(f"rendering {path}")
        make_world_dataset(path, identities=identities, per_identity=per_identity,
                           size=args.size, seed=args.seed, split=split)  # fmt: skip
    return path


def protocol(args, name: str, pairs_per_fold: int | None = None) -> Path:
    from synthface.pipeline.world import make_protocol

    pairs_per_fold = pairs_per_fold or args.pairs_per_fold
    root = Path(args.workdir) / f"pairs-{args.size}-{pairs_per_fold}"
    if not (root / f"{name}_pairs.json").is_file():
        log(f"rendering protocol {name}")
        make_protocol(root, name, folds=10, pairs_per_fold=pairs_per_fold, size=args.size,
                      seed=args.seed)  # fmt: skip
    return root / f"{name}.bin"


def run(args, name: str, dataset: Path, epochs: float, **sections) -> Path:
    """Train one fresh run of the recipe with ``sections`` merged in; returns the model dir."""
    from synthface.pipeline.config import validate_config
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.training import train

    out = Path(args.workdir) / "runs" / name
    if args.reuse and (out / "model" / "config.json").is_file():
        log(f"reusing {out}")
        return out / "model"
    shutil.rmtree(out, ignore_errors=True)
    cfg = copy.deepcopy(RECIPE)
    cfg["model"]["input_size"] = args.size
    cfg["train"].update({"device": args.device, "mixed_precision": args.mixed_precision})
    cfg["data"]["num_workers"] = args.workers
    cfg["train"].update({"output_dir": str(out), "epochs": epochs, "seed": args.seed})
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    cfg["data"]["train"] = str(dataset)
    t0 = time.perf_counter()
    log(f"training {name}")
    result = train(validate_config(cfg, TrainConfig))
    (out / "bench_train.json").write_text(json.dumps(
        {"seconds": round(time.perf_counter() - t0, 1), "steps": result.global_step,
         "metrics": result.metrics}, indent=2))  # fmt: skip
    return result.model_dir


def verify(model_dir: Path, bin_path: Path) -> dict:
    from synthface.pipeline.formats.verification_bin import read_bin
    from synthface.pipeline.shards import decode_image
    from synthface.recognition.embedder import load_embedder
    from synthface.recognition.evaluation.verification import evaluate_embeddings

    blobs, issame = read_bin(bin_path)
    emb = load_embedder(model_dir).embed(np.stack([decode_image(b) for b in blobs]), flip=True)
    res = evaluate_embeddings(emb, np.asarray(issame), nfolds=10)
    return {"accuracy": round(res.accuracy, 4), "std": round(res.accuracy_std, 4)}


def dataset_images(path: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    from synthface.pipeline.shards import iter_samples

    samples = list(iter_samples(path, split))
    return (np.stack([s["image"] for s in samples]), np.array([s["label"] for s in samples]),
            [s["__key__"] for s in samples])  # fmt: skip


def fit(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Images resized to a model's input (generated 32 px images for a 112 px recognizer)."""
    from PIL import Image

    if tuple(images.shape[1:3]) == tuple(size):
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize(size[::-1], Image.BILINEAR))
                     for im in images])  # fmt: skip


def all_pair_scores(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of every pair i < j and whether it is genuine (memory ~ N^2 / 2 floats)."""
    i, j = np.triu_indices(len(labels), 1)
    return np.einsum("nd,nd->n", emb[i], emb[j]), labels[i] == labels[j]


# ---------------------------------------------------------------- ddl


def cmd_ddl(args) -> dict:
    data = world(args, "train", args.identities, args.per_identity)
    sets = {p: protocol(args, p) for p in ("lfw", "cfp-fp", "lowres")}
    runs = {
        "no ddl": {},
        "ddl, hard = |yaw| >= 30": {"ddl": {"hard": {"kind": "yaw", "threshold": 30}}},
        "ddl, hard = blur >= 0.8": {"ddl": {"hard": {"kind": "blur", "threshold": 0.8}}},
    }
    out = {}
    for i, (label, extra) in enumerate(runs.items()):
        model = run(args, ["base", "ddl-yaw", "ddl-blur"][i], data, args.epochs, **extra)
        out[label] = {p: verify(model, b) for p, b in sets.items()}
        log(f"{label}: {out[label]}")
    return {"train": str(data), "epochs": args.epochs, "results": out}


# ---------------------------------------------------------------- ekd


def cmd_ekd(args) -> dict:
    from synthface.recognition.embedder import load_embedder
    from synthface.recognition.evaluation.roc import tar_at_far

    data = world(args, "train", args.identities, args.per_identity)
    held = world(args, "eval", args.eval_identities, 6, split="eval")
    # a wider model trained twice as long: a teacher worth distilling from
    teacher = run(args, "teacher", data, 2 * args.epochs,
                  model={"params": {"widths": [24, 48, 96, 192]}})  # fmt: skip
    student = {"model": {"embedding_dim": 64, "params": {"widths": [8, 16, 32, 64]}},
               "data": {"sampler": {"kind": "balanced", "per_identity": 4,
                                    "random_fraction": 0.5}}}  # fmt: skip
    models = {
        f"teacher (tiny, widths 24-192, 128-d, {2 * args.epochs:g} epochs)": teacher,
        "student (widths 8-64, 64-d), no EKD": run(args, "student", data, args.epochs, **student),
        "student, EKD": run(
            args, "student-ekd", data, args.epochs, **student, ekd={"teacher": str(teacher)}
        ),
    }
    images, labels, _ = dataset_images(held, "eval")
    lfw = protocol(args, "lfw")
    fars = (1e-4, 1e-3, 1e-2)
    out = {}
    for label, model in models.items():
        emb = load_embedder(model).embed(images, flip=True)
        scores, same = all_pair_scores(emb, labels)
        tar = tar_at_far(same, scores, fars)
        out[label] = {"tar_at_far": {str(k): round(v, 4) for k, v in tar.items()},
                      "lfw": verify(model, lfw)}  # fmt: skip
        log(f"{label}: {out[label]}")
    n = len(labels)
    return {"heldout": f"{args.eval_identities} identities x 6 ({n} images, "
            f"{n * (n - 1) // 2} pairs)", "epochs": args.epochs, "results": out}  # fmt: skip


# ---------------------------------------------------------------- fiqa


def erc_table(images, labels, recognizer: Path, qualities: dict, seed: int) -> dict:
    """ERC for each quality score over all genuine pairs and sampled impostor pairs."""
    from synthface.recognition.embedder import load_embedder
    from synthface.recognition.evaluation.erc import error_versus_reject

    embedder = load_embedder(recognizer)
    emb = embedder.embed(fit(images, embedder.input_size))
    rng = np.random.default_rng(seed)
    i, j = np.triu_indices(len(labels), 1)
    same = labels[i] == labels[j]
    imp = np.flatnonzero(~same)
    keep = np.concatenate([np.flatnonzero(same), rng.choice(imp, min(len(imp), 200_000), False)])
    i, j, same = i[keep], j[keep], same[keep]
    scores = np.einsum("nd,nd->n", emb[i], emb[j])
    out = {}
    for name, q in qualities.items():
        q = np.asarray(q, np.float64) + rng.uniform(0, 1e-9, len(q))  # break ties randomly
        res = error_versus_reject(scores, same, np.minimum(q[i], q[j]), fmr=1e-3)
        out[name] = res.to_dict()
    return out


def cmd_fiqa(args) -> dict:
    from synthface.pipeline.config import validate_config
    from synthface.recognition.embedder import load_embedder
    from synthface.recognition.quality import QualityScorer, label_dataset, train_quality
    from synthface.recognition.quality.config import QualityTrainConfig

    work = Path(args.workdir)
    data = world(args, "train", args.identities, args.per_identity)
    held = world(args, "eval", args.eval_identities, 6, split="eval")
    lfw = protocol(args, "lfw")
    recognizer = run(args, "base", data, args.epochs)
    labels_path = work / "fiqa" / "labels.npy"
    if not labels_path.is_file() or not args.reuse:
        log("pseudo-labels")
        label_dataset(data, recognizer, labels_path)
    qdir = work / "fiqa" / "regressor"
    if not (qdir / "model" / "config.json").is_file() or not args.reuse:
        log("training the quality regressor")
        qcfg = validate_config({
            "data": {"train": str(data), "labels": str(labels_path), "batch_size": 64,
                     "num_workers": 1, "shuffle_buffer": 5000},
            "model": {"backbone": "tiny", "input_size": args.size, "init": str(recognizer),
                      "params": {"embedding_dim": 128}},
            "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 5e-4},
            "schedule": {"kind": "step", "milestones": [3, 5]},
            "train": {"output_dir": str(qdir), "epochs": args.quality_epochs, "device": "cpu"},
        }, QualityTrainConfig)  # fmt: skip
        train_quality(qcfg)
    qmodel = qdir / "model"
    scorer = QualityScorer(qmodel)
    rec = load_embedder(recognizer)

    def qualities(images: np.ndarray) -> dict:
        return {
            "SDD-FIQA regressor": scorer.score(images),
            "embedding norm": np.linalg.norm(rec.embed_raw(fit(images, rec.input_size)), axis=1),
            "random": np.random.default_rng(args.seed).random(len(images)),
        }

    images, labels, _ = dataset_images(held, "eval")
    real = erc_table(images, labels, recognizer, qualities(images), args.seed)
    log(f"real ERC areas: { {k: v['area'] for k, v in real.items()} }")

    gen_dir = generate(args, qmodel)
    g_images, g_labels, g_keys = dataset_images(gen_dir)
    meta_q = quality_from_meta(gen_dir)
    gq = qualities(g_images)
    # QC scored the images before JPEG encoding, these are the decoded files: close, not equal
    recorded = np.asarray([meta_q[k] for k in g_keys])
    agreement = float(np.corrcoef(gq["SDD-FIQA regressor"], recorded)[0, 1])
    log(
        f"QC-recorded vs re-scored quality: correlation {agreement:.4f}, max |diff| "
        f"{float(np.abs(gq['SDD-FIQA regressor'] - recorded).max()):.3f}"
    )
    assert agreement > 0.9, agreement
    generated = erc_table(g_images, g_labels, recognizer, gq, args.seed)
    log(f"generated ERC areas: { {k: v['area'] for k, v in generated.items()} }")

    cut = float(np.quantile(gq["SDD-FIQA regressor"], args.filter_fraction))
    filtered = filtered_copy(gen_dir, work / "fiqa" / "generated-filtered", meta_q, cut)
    syn = {}
    for label, ds, name in (("all generated samples", gen_dir, "syn-all"),
                            (f"QC filter: quality >= {cut:.1f} (drops {args.filter_fraction:.0%})",
                             filtered, "syn-filtered")):  # fmt: skip
        model = run(args, name, ds, args.syn_epochs)
        syn[label] = {"train_samples": int(json.loads((ds / "dataset.json").read_text())
                                           ["splits"]["train"]["num_samples"]),
                      "world lfw": verify(model, lfw)}  # fmt: skip
        log(f"{label}: {syn[label]}")
    return {"erc_real_world": real, "erc_generated": generated, "synthetic_to_real": syn,
            "generated": str(gen_dir)}  # fmt: skip


def generate(args, quality_model: Path) -> Path:
    from synthface.flows.defaults import load_default_config
    from synthface.generators.dataset import generate_dataset

    out = Path(args.workdir) / "fiqa" / "generated"
    cfg = load_default_config()
    cfg = cfg.model_copy(update={
        "identities": cfg.identities.model_copy(update={"count": args.generate_identities,
                                                        "samples_per_identity": 8}),
        "output": cfg.output.model_copy(update={"dir": str(out), "max_samples_per_shard": 400}),
        "qc": cfg.qc.model_copy(update={"quality_model": str(quality_model)}),
        "runner": cfg.runner.model_copy(update={"torch_threads": 1}),
    })  # fmt: skip
    if not (out / "dataset.json").is_file():
        log(f"generating {args.generate_identities} identities x 8 with the demo models")
        t0 = time.perf_counter()
        generate_dataset(cfg)
        log(f"generated in {time.perf_counter() - t0:.0f} s")
    return out


def quality_from_meta(dataset: Path) -> dict[str, float]:
    from synthface.pipeline.shards import iter_samples

    return {s["__key__"]: s["meta"]["qc"]["quality"] for s in iter_samples(dataset, decode=False)}


def filtered_copy(src: Path, dst: Path, quality: dict[str, float], cut: float) -> Path:
    """The samples with quality >= ``cut`` as a new dataset (identities with < 2 dropped)."""
    from synthface.pipeline.shards import DatasetWriter, Sample, iter_samples

    if (dst / "dataset.json").is_file():
        return dst
    kept: dict[int, list] = {}
    for s in iter_samples(src, decode=False):
        if quality[s["__key__"]] >= cut:
            kept.setdefault(s["label"], []).append(s)
    writer = DatasetWriter(dst, config={"filtered_from": str(src), "min_quality": cut},
                           max_samples=400)  # fmt: skip
    label = 0
    for identity in sorted(kept):
        if len(kept[identity]) < 2:
            continue
        for index, s in enumerate(kept[identity]):
            meta = {k: v for k, v in s["meta"].items() if k not in ("identity", "index")}
            writer.add(Sample(identity=label, index=index, image=bytes(s["image"]), ext="jpg",
                              meta=meta))  # renumbered: the old numbers leave the meta  # fmt: skip
        label += 1
    writer.close()
    return dst


# ---------------------------------------------------------------- afa


def cmd_afa(args) -> dict:
    import torch

    from synthface.pipeline.formats.verification_bin import read_bin
    from synthface.pipeline.shards import decode_image
    from synthface.recognition.attacks import pgd_attack
    from synthface.recognition.checkpoint import load_recognizer
    from synthface.recognition.evaluation.robustness import robust_verification
    from synthface.recognition.training.data import to_model_input

    data = world(args, "train", args.identities, args.per_identity)
    pairs = protocol(args, "lfw", pairs_per_fold=args.afa_pairs_per_fold)
    blobs, issame = read_bin(pairs)
    images = np.stack([decode_image(b) for b in blobs])
    adv = {"steps": args.afa_train_steps, "epsilon_max": 8.0}
    models = {
        "standard": run(args, "afa-standard", data, args.afa_epochs),
        "PGD adversarial training": run(
            args, "afa-pgd", data, args.afa_epochs, adversarial={**adv, "method": "pgd"}
        ),
        "AFA": run(args, "afa-afa", data, args.afa_epochs, adversarial={**adv, "method": "afa"}),
    }
    eps = (2.0, 4.0, 8.0)
    out = {}
    for label, model_dir in models.items():
        model = load_recognizer(model_dir)
        res = robust_verification(model, images, np.asarray(issame), epsilons=eps, steps=5)
        out[label] = {"clean": round(res["clean"], 4),
                      "robust": {str(k): round(v, 4) for k, v in res["robust"].items()}}  # fmt: skip
        if hasattr(model, "fusing_weight"):
            x = to_model_input(torch.from_numpy(images[:256]), args.size)
            with torch.no_grad():
                ref = model(x)
            w = {"0": round(float(model.fusing_weight(x).mean()), 4)}
            for e in eps:
                xa = pgd_attack(model, x, ref, e, steps=5)
                w[str(e)] = round(float(model.fusing_weight(xa).mean()), 4)
            out[label]["mean_fusing_weight"] = w
        log(f"{label}: {out[label]}")
    return {"pairs": len(issame), "epochs": args.afa_epochs, "attack": "PGD-5, L-inf",
            "results": out, "witness_r2": afa_witness(load_recognizer(models["AFA"]), data)}  # fmt: skip


def afa_witness(model, data: Path, images: int = 2400) -> dict:
    """Is the attack's strength readable from the features at all? R^2 on held-out rows
    of predicting ``epsilon / epsilon_max`` (clean rows 0, PGD-3 of strength U(0, 8)
    against the clean branch) by (a) the per-layer ridge regression on pooled statistics
    (channel mean, log mean square, log fine-grained energy; best layer), (b) a small conv
    detector trained by Adam on the image and on the inputs of three layers. Near 0: no
    witness, and no estimator of any kind can adapt the fusing weight."""
    import torch
    from torch import nn

    from synthface.pipeline.shards import iter_samples
    from synthface.recognition.attacks import pgd_attack
    from synthface.recognition.training.data import to_model_input

    torch.manual_seed(0)
    model.eval()
    picks = [0, len(model.duals) // 3, 2 * len(model.duals) // 3]
    grabbed: dict = {}
    hooks = [d.register_forward_hook(lambda m, i, o, k=k: grabbed.__setitem__(k, i[0]))
             for k, d in enumerate(model.duals)]  # fmt: skip
    raw = [s["image"] for _, s in zip(range(images // 2), iter_samples(data))]
    x_all = to_model_input(torch.from_numpy(np.stack(raw)), model.input_size[0])
    feats: dict = {}
    targets = []
    for b in range(0, len(x_all), 100):
        x = x_all[b : b + 100]
        eps, zero = torch.rand(len(x)) * 8, torch.zeros(len(x))
        with torch.no_grad():
            ref = model(x, fuse=zero)
        xa = pgd_attack(lambda z: model(z, fuse=zero), x, ref, eps, steps=3)  # noqa: B023
        both = torch.cat([x, xa])
        with torch.no_grad():
            model(both, fuse=torch.zeros(len(both)))
        feats.setdefault("image", []).append(both)
        for k, t in grabbed.items():
            feats.setdefault(k, []).append(t.detach())
        targets.append(torch.cat([zero, eps / 8]))
    for h in hooks:
        h.remove()
    w = torch.cat(targets)
    order = torch.randperm(len(w))
    w, n_fit = w[order], int(0.75 * len(w))

    def r2(pred: torch.Tensor) -> float:
        err = (pred.clamp(0, 1) - w[n_fit:]).square().mean()
        return round(1 - float(err / w[n_fit:].var()), 3)

    def pooled(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 2:
            return torch.cat([t, torch.log(t.square() + 1e-6)], 1)
        fine = (t[:, :, 1:] - t[:, :, :-1]).square().mean((2, 3))
        fine = fine + (t[:, :, :, 1:] - t[:, :, :, :-1]).square().mean((2, 3))
        return torch.cat([t.mean((2, 3)), torch.log(t.square().mean((2, 3)) + 1e-6),
                          torch.log(fine + 1e-6)], 1)  # fmt: skip

    ridge = {}
    for k in range(len(model.duals)):
        z = pooled(torch.cat(feats[k])[order]).double()
        z = (z - z[:n_fit].mean(0)) / (z[:n_fit].std(0) + 1e-6)
        z = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)
        a = z[:n_fit]
        coef = torch.linalg.solve(a.T @ a + 0.01 * n_fit * torch.eye(a.shape[1], dtype=a.dtype),
                                  a.T @ w[:n_fit].double())  # fmt: skip
        ridge[k] = r2((z[n_fit:] @ coef).float())
    out = {"ridge_best_layer": max(ridge.values()), "ridge_per_layer": list(ridge.values())}
    for key in ["image", *picks]:
        f = torch.cat(feats[key])[order]
        net = nn.Sequential(nn.Conv2d(f.shape[1], 32, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1))  # fmt: skip
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        for _ in range(15):
            for rows in torch.randperm(n_fit).split(64):
                loss = (net(f[rows]).squeeze(1) - w[rows]).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            out[f"conv_detector_{key if key == 'image' else f'layer{key}'}"] = r2(
                net(f[n_fit:]).squeeze(1)
            )
    log(f"witness R^2: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["ddl", "ekd", "fiqa", "afa"])
    p.add_argument("--workdir", default="out/bench/options")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--identities", type=int, default=400)
    p.add_argument("--per-identity", type=int, default=12)
    p.add_argument("--eval-identities", type=int, default=300)
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--quality-epochs", type=float, default=6)
    p.add_argument("--syn-epochs", type=float, default=20)
    p.add_argument("--afa-epochs", type=float, default=6)
    p.add_argument("--pairs-per-fold", type=int, default=300, help="protocols' genuine pairs")
    p.add_argument("--afa-pairs-per-fold", type=int, default=50)
    p.add_argument("--afa-train-steps", type=int, default=2, help="PGD steps while training")
    p.add_argument("--generate-identities", type=int, default=120)
    p.add_argument("--filter-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    p.add_argument("--workers", type=int, default=1, help="loader workers per run")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs in --workdir")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.perf_counter()
    result = {"ddl": cmd_ddl, "ekd": cmd_ekd, "fiqa": cmd_fiqa, "afa": cmd_afa}[args.command](args)
    result = {"command": " ".join(["bench/training_options.py", *sys.argv[1:]]),
              "seconds": round(time.perf_counter() - t0, 1),
              "load_average_at_end": [round(x, 1) for x in os.getloadavg()], **result}  # fmt: skip
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    (Path(args.workdir) / f"{args.command}.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
