"""Is identity learnable from MinusFace's server view, and what takes it away?

The privacy benchmark's MinusFace row trains its second stage on decoded, channel-shuffled
residues, and at world scale that recognizer never leaves the margin loss's uniform level.
This bench separates the possible causes with one closed-set probe: the same tiny
recognizer (softmax head, SGD one-cycle) trained for ``--steps`` on different views of
the same images, then scored by top-1 identification of the last ``--held-out`` images of
every identity, which it never trained on. Views:

* ``image``: the face itself (the ceiling at this budget);
* ``residue``: the stage-1 residue decoded without shuffling (what ``G`` leaves);
* ``fixed``: the residue's channels permuted by one permutation shared by every sample
  (a fixed, invertible recoding: the information is all there);
* ``shuffle``: a fresh permutation per sample and step (MinusFace's stage 2).

If ``fixed`` learns and ``shuffle`` does not, the shuffle itself, not the residue or the
pipeline, is what removes the usable identity at this data scale. ``--decode reference``
decodes as the reference code does (full inverse DCT, bilinear down-sampling with
``align_corners=True``, clamp) instead of this project's block-centre sampling.

    .venv/bin/python bench/minusface_learnability.py \\
        --stage1 $SYNTHFACE_HOME/out/privacy/world_run/methods/minusface/stage1/model \\
        --data $SYNTHFACE_HOME/out/privacy/world/train --views image,residue,fixed,shuffle
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from synthface.pipeline.shards import iter_samples
from synthface.recognition.backbones import create_backbone
from synthface.recognition.checkpoint import load_recognizer
from synthface.recognition.privacy import bdct


def load_images(data: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for s in iter_samples(data, split=split):
        images.append(s["image"])
        labels.append(s["label"])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.tensor(labels)


def residues(stage1, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([stage1.split(x[i : i + 256])[1] for i in range(0, len(x), 256)])


def decode(r: torch.Tensor, how: str, size: int) -> torch.Tensor:
    if how == "centre":
        return bdct.from_bdct(r, output_size=size)
    full = bdct.from_bdct(r) * 0.5 + 0.5
    out = F.interpolate(full, size=(size, size), mode="bilinear", align_corners=True)
    return out.clamp(0.0, 1.0) * 2.0 - 1.0


class Views:
    def __init__(self, x, res, how: str) -> None:
        self.x, self.res, self.how = x, res, how
        self.fixed = torch.randperm(res.shape[1], generator=torch.Generator().manual_seed(5))

    def __call__(self, view: str, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if view == "image":
            return self.x[idx]
        r = self.res[idx]
        if view == "fixed":
            r = r[:, self.fixed]
        elif view == "shuffle":
            perm = torch.rand(r.shape[:2], generator=g).argsort(dim=1)
            r = r.gather(1, perm[:, :, None, None].expand_as(r))
        elif view != "residue":
            raise SystemExit(f"--views: unknown view {view!r}")
        return decode(r, self.how, self.x.shape[-1])


def probe(views: Views, view: str, labels, train_idx, test_idx, steps: int, lr: float) -> dict:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    classes = int(labels.max()) + 1
    net = create_backbone("tiny", input_size=views.x.shape[-1], embedding_dim=128)
    norm = torch.nn.BatchNorm2d(3, affine=False)  # the benchmark's InputNorm
    head = torch.nn.Linear(128, classes)
    params = [*net.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    losses, t0 = [], time.perf_counter()
    net.train()
    norm.train()
    for _ in range(steps):
        b = train_idx[torch.randint(0, len(train_idx), (64,), generator=g)]
        with torch.no_grad():
            v = views(view, b, g)
        loss = F.cross_entropy(head(net(norm(v))), labels[b])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    net.eval()
    norm.eval()
    ge = torch.Generator().manual_seed(9)
    hits = 0
    with torch.no_grad():
        for i in range(0, len(test_idx), 256):
            b = test_idx[i : i + 256]
            hits += int((head(net(norm(views(view, b, ge)))).argmax(1) == labels[b]).sum())
    k = max(1, steps // 15)
    return {
        "view": view,
        "decode": views.how if view != "image" else None,
        "steps": steps,
        "train_loss_first": round(float(np.mean(losses[:k])), 3),
        "train_loss_last": round(float(np.mean(losses[-k:])), 3),
        "held_out_top1": round(hits / len(test_idx), 4),
        "chance": round(1 / classes, 4),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage1", required=True, help="the minusface_residue model directory")
    ap.add_argument("--data", required=True, help="labelled shards (the benchmark's train_data)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--views", default="image,residue,fixed,shuffle")
    ap.add_argument("--decode", choices=("centre", "reference"), default="centre")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--held-out", type=int, default=2, help="test images per identity")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="append result rows to this JSON-lines file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stage1 = load_recognizer(args.stage1).eval()
    x, labels = load_images(Path(args.data), args.split)
    res = residues(stage1, x)
    test = np.zeros(len(labels), bool)
    for c in labels.unique():
        test[np.flatnonzero(labels.numpy() == int(c))[-args.held_out :]] = True
    train_idx = torch.from_numpy(np.flatnonzero(~test))
    test_idx = torch.from_numpy(np.flatnonzero(test))
    views = Views(x, res, args.decode)
    for view in args.views.split(","):
        row = probe(views, view, labels, train_idx, test_idx, args.steps, args.lr)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
