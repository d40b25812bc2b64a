"""GPU JPEG decoding (nvImageCodec, DALI) vs the CPU paths, pixels and images/s.

    python bench/gpu/jpeg_decode_gpu.py [--size 112] [--images 2048] [--batch 256]

Not run by the project yet (no GPU was lent to the session that wrote it). Whichever of
``nvidia.nvimgcodec`` (pip ``nvidia-nvimgcodec-cu12``) and ``nvidia.dali`` (pip
``nvidia-dali-cuda120``) is importable is measured; a missing one is reported, not an
error. Images: procedural world faces encoded as the world writes them (quality 95,
4:2:0). For each decoder: the largest absolute pixel difference to PIL (nvJPEG's IDCT and
chroma upsampling are not libjpeg's, so a few grey levels are expected, unlike the CPU
fast path's 0) and decodes per second, batch-wise, the result left on the GPU (the copy
back to the host is excluded, as training would use the tensor in place). CPU rows in the
same run: PIL and the project's ``decode_image`` (simplejpeg), one thread.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time

import numpy as np


def pil(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def timed(fn, images: list[bytes], batch: int, repeat: int = 3) -> float:
    import torch

    fn(images[:batch])  # warm-up: handles, memory pools, kernels
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, len(images), batch):
            fn(images[i : i + batch])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return round(len(images) / best, 1)


def nvimgcodec_decoder():
    from nvidia import nvimgcodec

    decoder = nvimgcodec.Decoder()
    params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.RGB)

    def decode(batch: list[bytes]):
        return decoder.decode(batch, params=params)

    def to_numpy(img) -> np.ndarray:
        return np.asarray(img.cpu())

    return decode, to_numpy


def dali_decoder(batch_size: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=4, device_id=0, prefetch_queue_depth=1)
    def pipe():
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
        return fn.decoders.image(jpegs, device="mixed", output_type=types.RGB)

    p = pipe()
    p.build()

    def decode(batch: list[bytes]):
        p.feed_input("jpegs", [np.frombuffer(d, np.uint8) for d in batch])
        (out,) = p.run()
        return out

    def to_numpy(out, i: int = 0) -> np.ndarray:
        return np.asarray(out.as_cpu().at(i))

    return decode, to_numpy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args(argv)

    import torch

    from synthface.pipeline.shards import decode_image, iter_samples
    from synthface.pipeline.shards.jpeg import jpeg_decoder
    from synthface.pipeline.world import make_world_dataset

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        make_world_dataset(tmp, identities=max(2, args.images // 16), per_identity=16,
                           size=args.size)  # fmt: skip
        images = [s["image"] for s in iter_samples(tmp, decode=False)][: args.images]
    refs = [pil(d).astype(np.int16) for d in images[:64]]

    report: dict = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "size": args.size,
        "images": len(images),
        "batch": args.batch,
        "cpu_1_thread": {
            "PIL": timed(lambda b: [pil(d) for d in b], images, args.batch, 1),
            f"decode_image ({jpeg_decoder()})": timed(
                lambda b: [decode_image(d) for d in b], images, args.batch, 1
            ),
        },
        "gpu_decoders": {},
    }
    for name in ("nvimgcodec", "dali"):
        try:
            if name == "nvimgcodec":
                decode, to_numpy = nvimgcodec_decoder()
                first = decode(images[:64])
                outs = [to_numpy(im) for im in first]
            else:
                decode, to_numpy = dali_decoder(args.batch)
                first = decode(images[:64])
                outs = [to_numpy(first, i) for i in range(64)]
        except ImportError as exc:
            report["gpu_decoders"][name] = f"not installed ({exc})"
            continue
        diff = max(int(np.abs(o.astype(np.int16) - r).max()) for o, r in zip(outs, refs))
        report["gpu_decoders"][name] = {
            "max_abs_diff_vs_PIL": diff,
            "images_per_s": timed(decode, images, args.batch),
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
