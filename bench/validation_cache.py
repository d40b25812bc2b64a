"""Training validation pass: decoding the ``.bin`` every pass vs the decoded memory-mapped cache.

    OMP_NUM_THREADS=1 .venv/bin/python bench/validation_cache.py [--pairs 6000] [--size 112]

Source: a synthetic verification ``.bin`` of procedural-world faces at --size px, JPEG
(``--distinct`` faces rendered, each re-encoded at a quality of 80..95 so that every image's
bytes differ; decoding costs the same as for distinct faces). Timed on one process, best
of --repeat, torch on one thread:

* ``cache build``: the one-time decode into the ``.npy`` (1 thread, then --workers threads),
  each time into a fresh folder;
* ``cached open``: hashing the ``.bin`` and opening the map (every later run);
* ``data path``: producing every batch of uint8 pixels for one pass: decoding the JPEGs
  (what validation did at every pass) vs reading the memory map;
* ``N images``: validation of the first --pass-images images (batches to the project's
  ``tiny`` backbone at --input-size, flip-summed), the old code path vs
  ``embed_sharded``; the embeddings must be identical.

The backbone cost is the same in both passes; the tiny one at a small input keeps it
from drowning the data path on a CPU. With a real backbone on a GPU the embedding is a
second or two per set and the data path is most of an uncached pass.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import best


def make_bin(path: Path, pairs: int, size: int, distinct: int) -> None:
    from PIL import Image

    from synthface.pipeline.formats.verification_bin import write_bin
    from synthface.pipeline.world.dataset import render_images

    jobs = [(i // 2, i % 2, None) for i in range(distinct)]
    faces = [img for _, _, img, _ in render_images(jobs, seed=0, split="eval", size=size)]
    blobs = []
    for i in range(2 * pairs):
        import io

        buf = io.BytesIO()
        Image.fromarray(faces[i % distinct]).save(buf, "JPEG", quality=80 + i % 16)
        blobs.append(buf.getvalue())
    write_bin(path, blobs, [(i % 2 == 0) for i in range(pairs)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6000)
    ap.add_argument("--size", type=int, default=112, help="image side in the .bin")
    ap.add_argument("--input-size", type=int, default=32, help="backbone input (resized to)")
    ap.add_argument("--distinct", type=int, default=400, help="faces rendered (then re-encoded)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2, help="decoding threads for the cache build")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--pass-images", type=int, default=2048, help="whole passes time the first N images"
    )
    ap.add_argument("--bin", type=Path, help="reuse (or create) this .bin instead of a temp one")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from synthface.pipeline.config import validate_config
    from synthface.pipeline.formats.verification_bin import read_bin
    from synthface.pipeline.shards import decode_image
    from synthface.recognition.backbones import create_backbone
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.evaluation.bin_cache import open_decoded_bin
    from synthface.recognition.training.data import to_model_input
    from synthface.recognition.training.loop import _accelerator
    from synthface.recognition.training.validation import embed_sharded

    tmp = Path(tempfile.mkdtemp(prefix="valcache-"))
    path = args.bin or tmp / "world.bin"
    if not path.is_file():
        t = time.perf_counter()
        make_bin(path, args.pairs, args.size, args.distinct)
        print(f"made {path} in {time.perf_counter() - t:.1f} s")
    blobs, issame = read_bin(path)
    n, bs = len(blobs), args.batch_size
    mb = path.stat().st_size / 1e6
    print(f"set: {len(issame)} pairs, {n} images at {args.size} px, {mb:.1f} MB")

    cfg = validate_config(
        {
            "data": {"train": str(tmp)},
            "model": {"backbone": "tiny", "input_size": args.input_size, "embedding_dim": 512},
            "train": {"output_dir": str(tmp / "run"), "device": "cpu"},
            "validation": {"sets": [str(path)], "batch_size": bs},
        },
        TrainConfig,
    )
    acc = _accelerator(cfg)
    torch.manual_seed(0)
    backbone = create_backbone("tiny", input_size=args.input_size, embedding_dim=512).eval()

    @torch.no_grad()
    def embed_batch(batch: np.ndarray) -> torch.Tensor:
        x = to_model_input(torch.from_numpy(batch), args.input_size)
        return backbone(x).float() + backbone(x.flip(-1)).float()

    def old_batches(stop: int = n):  # what validation did before the cache, at every pass
        for lo in range(0, stop, bs):
            yield np.stack([decode_image(b) for b in blobs[lo : min(lo + bs, stop)]])

    def uncached_pass() -> np.ndarray:
        return np.concatenate([embed_batch(b).double().numpy() for b in old_batches(m)])

    rows = []
    for workers in sorted({1, args.workers}):
        dirs = iter(range(args.repeat))

        def build(w=workers, dirs=dirs):  # a fresh cache folder each time: the build is timed
            return open_decoded_bin(path, tmp / f"cache-{w}-{next(dirs)}", workers=w)

        t_build, _ = best(build, args.repeat)
        rows.append((f"cache build ({workers} thread{'s' if workers > 1 else ''}, once)", t_build))
    t_open, s = best(lambda: open_decoded_bin(path, tmp / "cache-1-0"), args.repeat)
    assert not s.built
    rows.append(("cached open (sha256 + map, every run)", t_open))

    def new_batches():
        for lo in range(0, n, bs):
            yield np.array(s.images[lo : lo + bs])

    t_old_data, _ = best(lambda: sum(len(b) for b in old_batches()), args.repeat)
    rows.append(("data path per pass, uncached (decode)", t_old_data))
    t_new_data, _ = best(lambda: sum(len(b) for b in new_batches()), args.repeat)
    rows.append(("data path per pass, cached (map read)", t_new_data))
    m = min(args.pass_images, n)
    t_old, old = best(uncached_pass, args.repeat)
    rows.append((f"{m} images, uncached (decode + embed at {args.input_size} px)", t_old))
    t_new, new = best(lambda: embed_sharded(backbone, s.images[:m], cfg, acc), args.repeat)
    rows.append((f"{m} images, cached (map + embed at {args.input_size} px)", t_new))
    print(f"identical embeddings: {np.array_equal(old, new)}")
    for name, seconds in rows:
        print(f"{name:<56} {seconds:8.2f} s")
    print(f"data path x{t_old_data / t_new_data:.0f} faster; pass x{t_old / t_new:.2f} faster")


if __name__ == "__main__":
    main()
