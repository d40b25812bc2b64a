"""JPEG decoding: PIL vs libjpeg-turbo bindings, pixels and images/s per core, and the loader.

    OMP_NUM_THREADS=1 .venv/bin/python bench/jpeg_decode.py            # ~2 min, 1 core
    OMP_NUM_THREADS=1 .venv/bin/python bench/jpeg_decode.py --repeat 1 --loader-batches 5

1. Pixels: the largest absolute difference to PIL's decode (``Image.open(...).convert
   ("RGB")``) of every candidate setting, on procedural world faces and on real
   photographs (crops of the portraits shipped with matplotlib and insightface), at
   112 and 256 px, encoded at quality 95 with 4:2:0 and 4:4:4 chroma.
2. Speed: decodes per second on one core, the same images for every decoder, best of
   ``--repeat`` passes: the project's ``decode_image`` with each
   ``SYNTHFACE_JPEG_DECODER`` setting, and the bare bindings.
3. The training loader end to end (``open_batches`` with ``num_workers: 0``, so decoding
   runs on this one core): images/s for the ``stream`` and ``random`` samplers with PIL
   and with the fast path, on a world dataset of 112 px JPEGs.

PyTurboJPEG is measured when importable (it needs the libturbojpeg shared library from
the system's package manager, PyTurboJPEG 1.x for libjpeg-turbo 2.x). Prints one JSON
document. Speeds are per core: images over the process's CPU time (not wall time),
which other jobs on a shared machine disturb much less than wall time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

PORTRAITS = (("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
             ("insightface", "data/images/t1.jpg"))  # fmt: skip


def portraits() -> list[np.ndarray]:
    """Real photographs shipped inside installed packages (no download)."""
    import importlib

    from PIL import Image

    out = []
    for package, rel in PORTRAITS:
        try:
            root = Path(importlib.import_module(package).__file__).parent
            out.append(np.asarray(Image.open(root / rel).convert("RGB")))
        except (ImportError, OSError):
            continue
    return out


def crops(photo: np.ndarray, size: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    from PIL import Image

    h, w = photo.shape[:2]
    side = min(h, w, max(size, min(h, w) // 2))
    out = []
    for _ in range(count):
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        im = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BICUBIC)
        out.append(np.asarray(im))
    return out


def encode(img: np.ndarray, subsampling: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95, subsampling=subsampling)
    return buf.getvalue()


def candidates() -> dict:
    """name -> bytes -> HxWx3 uint8, for each importable binding and setting."""
    out = {}
    try:
        import simplejpeg

        for fd in (False, True):
            for fu in (False, True):
                out[f"simplejpeg fastdct={fd} fastupsample={fu}"] = lambda d, fd=fd, fu=fu: (
                    simplejpeg.decode_jpeg(d, colorspace="RGB", fastdct=fd, fastupsample=fu)
                )
    except ImportError:
        pass
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        tj = TurboJPEG()
        out["pyturbojpeg (default flags)"] = lambda d: tj.decode(d, pixel_format=TJPF_RGB)
    except (ImportError, OSError, RuntimeError):
        pass
    return out


def pil_decode(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def rate(fn, images: list[bytes], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for d in images:
            fn(d)
        best = min(best, time.process_time() - t0)
    return round(len(images) / best, 1)


def project_decode(setting: str):
    from synthface.pipeline.shards import decode_image
    from synthface.pipeline.shards.jpeg import set_jpeg_decoder

    set_jpeg_decoder(setting)
    return decode_image


def loader_rate(world: Path, kind: str, setting: str, batches: int) -> float:
    from synthface.pipeline.shards.jpeg import set_jpeg_decoder
    from synthface.recognition.config import DataConfig
    from synthface.recognition.training.data import inspect_dataset, open_batches

    set_jpeg_decoder(setting)
    cfg = DataConfig(train=str(world), batch_size=64, num_workers=0, shuffle_buffer=1000,
                     sampler={"kind": kind})  # fmt: skip
    info = inspect_dataset(cfg)
    it = open_batches(info, cfg, num_batches=batches + 1, seed=0)
    next(it)  # index build / first shard open / buffer fill
    t0 = time.process_time()
    for _ in range(batches):
        next(it)
    return round(batches * cfg.batch_size / (time.process_time() - t0), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/bench/jpeg_decode")
    p.add_argument("--images", type=int, default=200, help="images per size and source")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--loader-batches", type=int, default=30)
    args = p.parse_args(argv)

    import torch

    from synthface.pipeline.shards import iter_samples
    from synthface.pipeline.shards.jpeg import set_jpeg_decoder
    from synthface.pipeline.world import make_world_dataset

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    out = Path(args.out)
    photos = portraits()
    sets: dict[str, list[bytes]] = {}
    for size in (112, 256):
        world = out / f"world{size}"
        if not (world / "dataset.json").exists():
            make_world_dataset(world, identities=max(2, args.images // 10), per_identity=10,
                               size=size, split="train")  # fmt: skip
        faces = [s["image"] for s in iter_samples(world, decode=False)][: args.images]
        sets[f"world {size}px 4:2:0"] = faces  # as the world writes them (encode_image)
        sets[f"world {size}px 4:4:4"] = [encode(pil_decode(d), 0) for d in faces]
        real = [c for ph in photos for c in crops(ph, size, args.images // len(photos), rng)]
        if real:
            sets[f"photo {size}px 4:2:0"] = [encode(c, 2) for c in real]
            sets[f"photo {size}px 4:4:4"] = [encode(c, 0) for c in real]

    cands = candidates()
    pixels = {}
    for name, images in sets.items():
        refs = [pil_decode(d).astype(np.int16) for d in images]
        pixels[name] = {
            cand: int(max(np.abs(fn(d).astype(np.int16) - r).max() for d, r in zip(images, refs)))
            for cand, fn in cands.items()
        }

    speed = {}
    for name in ("world 112px 4:2:0", "world 256px 4:2:0", "photo 112px 4:2:0"):
        if name not in sets:
            continue
        images = sets[name]
        row = {"PIL Image.open+convert": rate(pil_decode, images, args.repeat)}
        for setting in ("pil", "auto"):
            row[f"decode_image, {setting}"] = rate(project_decode(setting), images, args.repeat)
        for cand, fn in cands.items():
            row[cand] = rate(fn, images, args.repeat)
        speed[name] = row

    loader = {}
    for kind in ("stream", "random"):
        for setting in ("pil", "auto"):
            loader[f"{kind}, {setting}"] = loader_rate(out / "world112", kind, setting,
                                                       args.loader_batches)  # fmt: skip
    report = {
        "machine": f"{os.cpu_count()} cores, 1 thread used",
        "decoder_auto": set_jpeg_decoder("auto"),
        "max_abs_diff_vs_PIL": pixels,
        "decodes_per_s": speed,
        "loader_images_per_s": loader,
    }
    print(json.dumps(report, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
