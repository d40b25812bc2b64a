"""Benchmarks of the procedural face world (docs/benchmarks.md, "Procedural world").

1. Render speed, one thread, image + normal/albedo/shading maps + mask, at 64x64
   and 112x112; printed as images/s and as a ratio to PIL's JPEG encoding of the
   same images measured in the same run (a machine-neutral yardstick).
2. Difficulty calibration: 10-fold verification accuracy of
   * a raw-pixel baseline (cosine of flattened grayscale pixels) -- should be poor,
   * an oracle on the ground-truth identity coefficients (cosine of standardised
     coefficients) -- the identity signal a recogniser can at most recover,
   on every protocol (lfw, cfp-fp, agedb, rof, bupt), scored with the project's
   evaluation code (recognition.evaluation.verification).
3. Learnability probe (``--probe``): a small CNN (4 conv blocks, 128-d embedding,
   CosFace-style normalised softmax, flip augmentation) trained from scratch on
   train-stream identities for a few epochs on one CPU thread, then verified on the
   eval-stream protocols. A lower bound on what a real recogniser reaches.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python bench/world.py [--speed] [--difficulty] [--probe]
        [--folds 10] [--pairs-per-fold 300] [--size 112] [--json OUT.json]
        [--probe-identities 600 --probe-per-identity 12 --probe-epochs 8 --probe-size 64]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from PIL import Image

from synthface.pipeline.limits import open_image
from synthface.pipeline.world.coefficients import (
    IDENTITY_FIELDS,
    IDENTITY_NORMAL,
    STYLE_FIELDS,
    sample_identity,
    sample_style,
    stack,
)
from synthface.pipeline.world.dataset import noise_seed
from synthface.pipeline.world.protocols import PROTOCOLS, make_protocol
from synthface.pipeline.world.render import render


def _batch(n: int, seed: int = 0):
    ids, sts = [], []
    for i in range(n):
        idc = sample_identity(seed, i)
        ids.append(idc)
        sts.append(sample_style(seed, i, 0, idc))
    seeds = np.array([noise_seed(seed, "train", i, 0) for i in range(n)])
    return stack(ids, IDENTITY_FIELDS), stack(sts, STYLE_FIELDS), seeds


def speed(sizes=(64, 112), n: int = 512, repeats: int = 3) -> dict:
    out = {}
    for size in sizes:
        idc, sty, seeds = _batch(n)
        render(idc, sty, size, noise_seeds=seeds)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t = time.process_time()
            res = render(idc, sty, size, noise_seeds=seeds)
            best = min(best, time.process_time() - t)
        t = time.process_time()
        for img in res.image:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=95)
        jpeg = time.process_time() - t
        out[size] = {
            "images_per_s": n / best,
            "jpeg_encode_per_s": n / jpeg,
            "render_cost_in_jpeg_encodes": best / jpeg,
        }
        print(
            f"render {size}x{size}: {n / best:8.0f} images/s (1 thread, incl. maps); "
            f"JPEG encode {n / jpeg:8.0f}/s; render = {best / jpeg:.2f}x a JPEG encode"
        )
    return out


def _gray(blobs: list[bytes]) -> np.ndarray:
    arrs = [np.asarray(open_image(b, mode="L"), dtype=np.float64).ravel() for b in blobs]
    x = np.stack(arrs)
    return x - x.mean(1, keepdims=True)  # per-image brightness offset removed (fairer baseline)


def _oracle(summary_pairs: list[dict], seed: int) -> tuple[np.ndarray, np.ndarray]:
    names = list(IDENTITY_NORMAL)
    std = np.array([IDENTITY_NORMAL[n][1] for n in names])
    mean = np.array([IDENTITY_NORMAL[n][0] for n in names])

    def vec(identity: int) -> np.ndarray:
        c = sample_identity(seed, identity, "eval")
        return (np.array([c[n] for n in names]) - mean) / std

    emb = np.stack([vec(p[k]) for p in summary_pairs for k in ("identity_a", "identity_b")])
    return emb, np.array([p["same"] for p in summary_pairs])


def difficulty(folds: int, pairs_per_fold: int, size: int, seed: int = 0) -> dict:
    from synthface.pipeline.formats.verification_bin import read_bin
    from synthface.recognition.evaluation.verification import evaluate_embeddings

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in PROTOCOLS:
            t = time.perf_counter()
            make_protocol(
                tmp, protocol, folds=folds, pairs_per_fold=pairs_per_fold, size=size, seed=seed
            )
            made = time.perf_counter() - t
            blobs, issame = read_bin(Path(tmp) / f"{protocol}.bin")
            pix = evaluate_embeddings(_gray(blobs), issame, name=f"{protocol} pixels", nfolds=folds)
            pairs = json.loads((Path(tmp) / f"{protocol}_pairs.json").read_text())["pairs"]
            emb, same = _oracle(pairs, seed)
            ora = evaluate_embeddings(emb, same, name=f"{protocol} oracle", nfolds=folds)
            results[protocol] = {
                "pixel_accuracy": pix.accuracy,
                "pixel_std": pix.accuracy_std,
                "oracle_accuracy": ora.accuracy,
                "oracle_std": ora.accuracy_std,
                "pairs": len(issame),
                "seconds_to_make": made,
            }
            print(
                f"{protocol:7s} pixel-NN {pix.accuracy * 100:6.2f} +- {pix.accuracy_std * 100:5.2f} %   "
                f"identity-coefficient oracle {ora.accuracy * 100:6.2f} +- {ora.accuracy_std * 100:5.2f} %   "
                f"({len(issame)} pairs, made in {made:.1f} s)"
            )
    return results


def probe(
    identities: int, per_identity: int, epochs: int, size: int, folds: int, pairs_per_fold: int
) -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from synthface.pipeline.formats.verification_bin import read_bin
    from synthface.pipeline.world.dataset import render_images
    from synthface.recognition.evaluation.verification import evaluate_embeddings

    torch.manual_seed(0)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    jobs = [(i, j, None) for i in range(identities) for j in range(per_identity)]
    x = np.zeros((len(jobs), size, size, 3), np.uint8)
    y = np.zeros(len(jobs), np.int64)
    for k, (i, _, img, _) in enumerate(render_images(jobs, seed=0, split="train", size=size)):
        x[k], y[k] = img, i

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(i, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o), nn.PReLU(o),
            nn.Conv2d(o, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.PReLU(o),
        )  # fmt: skip

    side = size // 16
    net = nn.Sequential(
        block(3, 24), block(24, 48), block(48, 96), block(96, 160), nn.Flatten(),
        nn.Dropout(0.2), nn.Linear(160 * side * side, 128), nn.BatchNorm1d(128),
    )  # fmt: skip
    weight = nn.Parameter(torch.randn(identities, 128) * 0.01)
    opt = torch.optim.AdamW([*net.parameters(), weight], lr=2e-3, weight_decay=5e-4)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    yt = torch.from_numpy(y)
    batch = 128
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for k in range(0, len(x) - batch + 1, batch):
            idx = perm[k : k + batch]
            xb, yb = xt[idx].clone(), yt[idx]
            flip = torch.rand(len(xb)) < 0.5
            xb[flip] = xb[flip].flip(3)
            cos = F.normalize(net(xb)) @ F.normalize(weight).T
            loss = F.cross_entropy(30 * (cos - 0.35 * F.one_hot(yb, identities)), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    train_s = time.perf_counter() - t0
    net.eval()
    results = {"train_seconds": train_s, "final_loss": loss.item()}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for protocol in PROTOCOLS:
            make_protocol(tmp, protocol, folds=folds, pairs_per_fold=pairs_per_fold, size=size)
            blobs, issame = read_bin(Path(tmp) / f"{protocol}.bin")
            imgs = np.stack([np.asarray(open_image(b)) for b in blobs])
            emb = []
            for k in range(0, len(imgs), 256):
                xb = (
                    torch.from_numpy(imgs[k : k + 256])
                    .permute(0, 3, 1, 2)
                    .float()
                    .div(127.5)
                    .sub(1)
                )
                emb.append((net(xb) + net(xb.flip(3))).numpy())
            res = evaluate_embeddings(np.concatenate(emb), issame, name=protocol, nfolds=folds)
            results[protocol] = {"accuracy": res.accuracy, "std": res.accuracy_std}
            print(
                f"probe CNN {protocol:7s} {res.accuracy * 100:6.2f} +- {res.accuracy_std * 100:5.2f} %"
            )
    print(
        f"probe: {identities} identities x {per_identity} images at {size}px, {epochs} epochs, "
        f"trained in {train_s:.0f} s (1 thread)"
    )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--difficulty", action="store_true")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--pairs-per-fold", type=int, default=300)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--probe-identities", type=int, default=600)
    ap.add_argument("--probe-per-identity", type=int, default=12)
    ap.add_argument("--probe-epochs", type=int, default=8)
    ap.add_argument("--probe-size", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    run_all = not (args.speed or args.difficulty or args.probe)
    report = {}
    if args.speed or run_all:
        report["speed"] = speed()
    if args.difficulty or run_all:
        report["difficulty"] = difficulty(args.folds, args.pairs_per_fold, args.size)
    if args.probe:
        report["probe"] = probe(
            args.probe_identities,
            args.probe_per_identity,
            args.probe_epochs,
            args.probe_size,
            args.folds,
            min(args.pairs_per_fold, 100),
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
