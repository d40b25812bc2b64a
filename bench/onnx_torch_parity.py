"""ONNX -> torch converter on full-size backbones: parity with onnxruntime, and speed.

    python bench/onnx_torch_parity.py [--backbones ir18 ir50 mobilefacenet] [--batch 8]

Each backbone (randomly initialised: parity and speed do not depend on the weights) is
exported with ``export_onnx`` at 112x112, converted with ``onnx_to_torch`` and run on the
same batch by onnxruntime, by the converted module and by the original torch module.
Prints the max abs difference of L2-normalised embeddings (converted vs onnxruntime), the
cosine between the input gradients of an identity loss (converted vs original torch), and
forward times (best of 5, ``timeit.repeat``) of all three.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np
import torch


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def measure(name: str, batch: int, tmp: Path) -> str:
    """One backbone: export, convert, compare with onnxruntime and the torch original."""
    import onnxruntime

    from synthface.recognition import create_backbone, export_onnx, onnx_to_torch

    torch.manual_seed(0)
    model = create_backbone(name, input_size=112).eval()
    path = tmp / f"{name}.onnx"
    export_onnx(model, path)
    t = time.perf_counter()
    conv = onnx_to_torch(path)
    t_convert = time.perf_counter() - t
    x = torch.rand(batch, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"data": x.numpy()})[0]
    with torch.no_grad():
        diff = float(np.abs(_unit(conv(x).numpy()) - _unit(ref)).max())
    target = torch.nn.functional.normalize(torch.randn(batch, model.embedding_dim), dim=1)

    def grad(m):
        xi = x.clone().requires_grad_(True)
        emb = torch.nn.functional.normalize(m(xi), dim=1)
        (1 - (emb * target).sum(1)).sum().backward()
        return xi.grad.flatten()

    cos = float(torch.nn.functional.cosine_similarity(grad(conv), grad(model), dim=0))
    with torch.no_grad():
        t_ort = min(timeit.repeat(lambda: session.run(None, {"data": x.numpy()}), number=1))
        t_conv = min(timeit.repeat(lambda: conv(x), number=1))
        t_torch = min(timeit.repeat(lambda: model(x), number=1))
    return (
        f"{name:14s} {diff:10.1e} {cos:9.6f} {t_convert:9.2f} {1000 * t_ort:8.1f} "
        f"{1000 * t_conv:12.1f} {1000 * t_torch:9.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["ir18", "ir50", "mobilefacenet"])
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch}, 112x112")
    print(
        f"{'backbone':14s} {'|emb diff|':>10s} {'grad cos':>9s} {'convert s':>9s} "
        f"{'ort ms':>8s} {'converted ms':>12s} {'torch ms':>9s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backbones:
            print(measure(name, args.batch, Path(tmp)))


if __name__ == "__main__":
    main()
