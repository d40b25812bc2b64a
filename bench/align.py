"""``shards from-folder --align`` throughput on CPU, with the detection cost separated.

    python bench/align.py [--images 400] [--size 256] [--repeat 2]

Source: procedural-world faces rendered at --size px with the world's pose, scale and
shift spread (unaligned "photos", JPEG q95, 20 per identity folder) and their true
landmarks in a sidecar file. Timed, same run, best of --repeat:

* plain ``from-folder`` (bytes copied, one decode check per image): the baseline;
* ``--align --landmarks``: decode, similarity estimate, warp to 112x112, JPEG encode, write;
* ``--align --detector``: the same with the detector path. NO REAL DETECTOR RUNS HERE (none
  can be downloaded on this machine): the model is the SCRFD-shaped stand-in graph of
  ``synthface.pipeline.faces.scrfd_stub`` at a 640x640 input, so the "detector" time is
  insightface's wrapper around an almost free graph (letterbox resize, blob, onnxruntime
  call, per-stride decode of 16,800 anchors, NMS), not SCRFD inference. Time inside
  ``detect`` is reported apart; a real SCRFD's inference time adds to it.

It also prints how far the world's true landmarks land from ``arcface_dst`` after
alignment (the faces' shape residual: the world's proportions differ from the template's).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import timeit
import warnings
from pathlib import Path

import numpy as np


def _source(root: Path, n: int, size: int, per: int) -> Path:
    from synthface.pipeline.shards import encode_image
    from synthface.pipeline.world.dataset import render_images

    lines = []
    jobs = [(i // per, i % per, None) for i in range(n)]
    for identity, index, image, meta in render_images(jobs, seed=0, split="train", size=size):
        rel = f"id{identity:05d}/{index:03d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(encode_image(image, "jpg"))
        coords = " ".join(f"{v:.3f}" for v in np.asarray(meta["landmarks"]).reshape(-1))
        lines.append(f"{rel} {coords}")
    sidecar = root.parent / "landmarks.txt"
    sidecar.write_text("\n".join(lines) + "\n")
    return sidecar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--per-identity", type=int, default=20)
    ap.add_argument("--det-size", type=int, default=640)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)  # insightface -> scikit-image

    from synthface.pipeline.faces.aligner import AlignConfig, Aligner
    from synthface.pipeline.faces.scrfd_stub import write_fixed_scrfd
    from synthface.pipeline.shards import DatasetWriter
    from synthface.pipeline.shards.folder import from_folder, iter_folder_samples

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src"
        sidecar = _source(src, args.images, args.size, args.per_identity)
        scale = args.det_size / args.size
        box = (0.2 * args.det_size, 0.2 * args.det_size, 0.8 * args.det_size, 0.8 * args.det_size)
        kps = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]])
        det = root / "stand_in_scrfd.onnx"
        write_fixed_scrfd(det, [(box, kps * args.det_size, 0.9)], size=args.det_size)
        n = args.images
        runs = {"n": 0}

        def out() -> Path:
            runs["n"] += 1
            return root / f"out{runs['n']}"

        t_plain = min(timeit.repeat(lambda: from_folder(src, out()), number=1, repeat=args.repeat))
        by_landmarks = AlignConfig(landmarks=str(sidecar))
        t_sidecar = min(
            timeit.repeat(
                lambda: from_folder(src, out(), align=by_landmarks), number=1, repeat=args.repeat
            )
        )
        from synthface.pipeline.faces.align import ARCFACE_DST
        from synthface.pipeline.shards import iter_samples

        landed = np.array(
            [
                s["meta"]["aligned_landmarks"]
                for s in iter_samples(root / f"out{runs['n']}", decode=False)
            ]
        )
        residual = np.linalg.norm(landed - ARCFACE_DST, axis=2)
        by_detector = AlignConfig(detector=str(det), det_size=args.det_size)
        detect_s: list[float] = []

        def with_detector():
            aligner = Aligner(by_detector)
            with DatasetWriter(out(), config={"bench": "align"}) as writer:
                for sample in iter_folder_samples(src, aligner=aligner):
                    writer.add(sample)
                writer.close()
            assert aligner.detector.calls == n
            detect_s.append(aligner.detector.seconds)

        t_detector = min(timeit.repeat(with_detector, number=1, repeat=args.repeat))
        t_detect = min(detect_s)
        print(
            f"machine: {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
            f"{n} world faces {args.size}x{args.size} JPEG -> 112x112; best of {args.repeat}; "
            f"detector input {args.det_size} (scale {scale:.2f})"
        )
        print(f"{'':58s} {'images/s':>9s} {'ms/image':>9s}")
        rows = [
            ("from-folder, no alignment (baseline)", t_plain),
            ("--align --landmarks (sidecar, no detector)", t_sidecar),
            ("--align --detector (stand-in graph), total", t_detector),
            ("  of which inside detect() (stand-in, no real SCRFD)", t_detect),
            ("  everything but detect()", t_detector - t_detect),
        ]
        for name, t in rows:
            print(f"{name:58s} {n / t:9.1f} {1000 * t / n:9.2f}")
        print(
            f"world landmarks after alignment, distance to arcface_dst: mean "
            f"{residual.mean():.2f} px, per point max {np.round(residual.max(0), 2).tolist()} px"
        )


if __name__ == "__main__":
    main()
