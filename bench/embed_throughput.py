"""Embedding throughput: torch checkpoint vs its ONNX export through onnxruntime (CPU).

Both run the same randomly initialised backbone (throughput does not depend on the
weights) on the same aligned-size uint8 batches through ``Embedder.embed``, so the ratio
shows what the ONNX path buys for ``synthface recognition embed``.

    .venv/bin/python bench/embed_throughput.py --backbone ir50 --images 64 --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _rate(embedder, images: np.ndarray, batch: int, repeats: int) -> float:
    embedder.embed(images[:batch], batch_size=batch)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        embedder.embed(images, batch_size=batch)
    return repeats * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ir50")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from synthface.recognition import create_backbone, export_onnx, load_embedder, save_recognizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(
        0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = create_backbone(args.backbone, input_size=args.size).eval()
        ckpt = save_recognizer(model, Path(tmp) / "ckpt")
        export_onnx(ckpt, Path(tmp) / "m.onnx")
        torch_emb = load_embedder(ckpt)
        onnx_emb = load_embedder(Path(tmp) / "m.onnx")
        opts = onnx_emb.session.get_session_options()
        opts.intra_op_num_threads = args.threads
        import onnxruntime

        onnx_emb.session = onnxruntime.InferenceSession(
            str(Path(tmp) / "m.onnx"), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        t = _rate(torch_emb, images, args.batch, args.repeats)
        o = _rate(onnx_emb, images, args.batch, args.repeats)
    print(
        f"backbone {args.backbone} {args.size}x{args.size}, batch {args.batch}, {args.threads} threads"
    )
    print(f"torch        {t:8.1f} images/s")
    print(f"onnxruntime  {o:8.1f} images/s  ({o / t:.2f}x torch)")


if __name__ == "__main__":
    main()
