"""``shards annotate`` throughput (images/s, end to end) with an ONNX recognizer on the CPU.

World faces at the aligned size go through ``shards from-folder`` and then
``annotate_dataset`` (decode, embed, estimate, write shards) with an ONNX export of a
randomly initialised backbone (throughput does not depend on the weights; ``ir50`` has
the shape of insightface's ``w600k_r50.onnx``), once with embeddings only and once with
the world-trained pose/age estimator as well (trained for a few steps here: its speed
does not depend on its training). insightface's ``1k3d68.onnx`` / ``genderage.onnx``
cannot be downloaded here, so their cost is not measured.

    OMP_NUM_THREADS=1 .venv/bin/python bench/annotate_throughput.py --backbone ir50 --images 96 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ir50")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--images", type=int, default=96, help="multiple of 8")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from synthface.pipeline.shards.folder import from_folder
    from synthface.pipeline.world.dataset import render_images
    from synthface.recognition import create_backbone, export_onnx
    from synthface.recognition.attributes.annotate import annotate_dataset
    from synthface.recognition.attributes.world_model import train_attribute_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs = [(i, j, None) for i in range(args.images // 8) for j in range(8)]
        for i, j, image, _ in render_images(jobs, seed=0, split="train", size=args.size):
            (root / "faces" / f"p{i:03d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "faces" / f"p{i:03d}" / f"{j}.jpg", quality=95)
        from_folder(root / "faces", root / "shards", max_samples=32)
        onnx = root / "rec.onnx"
        export_onnx(create_backbone(args.backbone, input_size=args.size).eval(), onnx)
        world = root / "world-attributes"
        train_attribute_model(world, identities=8, per_identity=4, eval_identities=0, steps=5)
        runs = {
            "embeddings only": {"attributes": False},
            "embeddings + world estimator": {"attribute_model": world},
        }
        for name, extra in runs.items():
            out = root / name.replace(" ", "_").replace("+", "and")
            start, cpu = time.perf_counter(), time.process_time()
            annotate_dataset(
                root / "shards",
                out,
                recognizer=onnx,
                batch_size=args.batch,
                threads=args.threads,
                **extra,
            )
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            # On a shared machine the wall clock counts other jobs' time; the process's
            # CPU time does not (with one thread, images per CPU second ~ idle images/s).
            print(
                f"{name}: {args.images} images of {args.size} px, {args.backbone} ONNX, "
                f"{args.threads} thread(s): {args.images / seconds:.1f} images/s wall "
                f"({seconds:.1f} s), {args.images / cpu:.1f} images per CPU second ({cpu:.1f} s)"
            )


if __name__ == "__main__":
    main()
