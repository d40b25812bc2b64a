"""FRCSyn scoring's image loading: threads and alignment (``embed_tree_images``).

    OMP_NUM_THREADS=1 .venv/bin/python bench/frcsyn_loading.py [--images 600] [--size 250]

Source: procedural-world faces rendered unaligned at --size px (the world's pose, scale
and shift spread; JPEG q95) in a comparison-tree ``images/`` folder, with their true
landmarks as a sidecar file. Timed, best of --repeat:

* ``load``: reading, decoding (and with ``--align``, aligning) every image and resizing
  it to the model input, through ``ordered_map`` with 1, 2 and 4 threads;
* ``score``: ``embed_tree_images`` with the project's ``tiny`` backbone at --input-size
  (flip-summed), 1 thread vs 4; the embeddings must be identical.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from timing import best


def make_tree(root: Path, n: int, size: int) -> tuple[list[str], Path]:
    from PIL import Image

    from synthface.pipeline.world.dataset import render_images

    rels, lines = [], []
    jobs = [(i // 10, i % 10, None) for i in range(n)]
    for identity, index, image, meta in render_images(jobs, seed=0, split="eval", size=size):
        rel = f"id{identity}/{index}.jpg"
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / rel, quality=95)
        rels.append(rel)
        coords = " ".join(f"{v:.3f}" for v in np.asarray(meta["landmarks"]).reshape(-1))
        lines.append(f"{rel} {coords}")
    (root / "landmarks.txt").write_text("\n".join(lines) + "\n")
    return rels, root / "landmarks.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--size", type=int, default=250, help="rendered image side")
    ap.add_argument("--input-size", type=int, default=32, help="backbone input")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)  # insightface -> scikit-image

    from synthface.pipeline.faces.aligner import AlignConfig
    from synthface.pipeline.parallel import ordered_map
    from synthface.recognition import create_backbone, load_embedder, save_recognizer
    from synthface.recognition.frcsyn.loading import TreeAlignment, load_tree_image
    from synthface.recognition.frcsyn.scoring import embed_tree_images

    tmp = Path(tempfile.mkdtemp(prefix="frcsyn-load-"))
    rels, sidecar = make_tree(tmp / "tree", args.images, args.size)
    images = tmp / "tree" / "images"
    torch.manual_seed(0)
    backbone = create_backbone("tiny", input_size=args.input_size, embedding_dim=512).eval()
    save_recognizer(backbone, tmp / "model", {})
    emb = load_embedder(tmp / "model")
    size = (args.input_size, args.input_size)
    cfg = AlignConfig(landmarks=str(sidecar))
    print(f"{len(rels)} images at {args.size} px; 2-core CPU numbers are contended if others run")

    load_tree_image(images, rels[0], size, TreeAlignment(cfg))  # imports insightface, cv2
    rows = []
    for aligned in (False, True):
        for workers in (1, 2, 4):

            def load(w=workers, a=aligned):
                align = TreeAlignment(cfg) if a else None
                fn = lambda rel: load_tree_image(images, rel, size, align)  # noqa: E731
                return sum(1 for _ in ordered_map(fn, rels, w))

            t, _ = best(load, args.repeat)
            what = "load + align" if aligned else "load"
            rows.append((f"{what}, {workers} thread{'s' if workers > 1 else ''}", t))
    outs = {}
    for workers in (1, 4):
        t, outs[workers] = best(
            lambda w=workers: embed_tree_images(
                images, rels, emb, workers=w, alignment=TreeAlignment(cfg)
            ),
            args.repeat,
        )
        rows.append((f"score aligned ({workers} thread{'s' if workers > 1 else ''})", t))
    print(f"identical embeddings for 1 and 4 threads: {np.array_equal(outs[1], outs[4])}")
    for name, seconds in rows:
        print(f"{name:<34} {seconds:7.2f} s  ({len(rels) / seconds:6.0f} images/s)")


if __name__ == "__main__":
    main()
