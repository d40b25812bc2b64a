"""Shard write/read throughput against plain ``tarfile`` on the same bytes, same run.

    python bench/shards.py [--images 4000] [--size 112] [--repeat 3]

Ours = ``write_shard`` (validation, deterministic headers, sha256, fsync, atomic rename,
sidecar) and the readers (``iter_samples`` and ``make_webdataset`` without decoding,
``ShardIndexDataset`` in order). Baseline = ``tarfile`` writing/reading exactly the same
members, no fsync, no hashing. Reads come from the page cache on both sides (the files
were just written), so they measure software overhead, not the disk. Best of --repeat.
The goal (issue 2) is >= 0.8x the baseline both ways.
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from timing import best


def _images(n: int, size: int) -> list[bytes]:
    from synthface.pipeline.shards import encode_image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        img = np.roll(base, i, axis=0)  # distinct, face-sized, JPEG-realistic sizes
        img[: size // 4] = (i * 37) % 256
        out.append(encode_image(img, "jpg", quality=90))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--per-identity", type=int, default=20)
    ap.add_argument("--shard-samples", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from synthface.pipeline.shards import (
        Sample,
        ShardIndexDataset,
        finalize_dataset,
        iter_samples,
        make_webdataset,
        plan_shards,
        write_shard,
    )
    from synthface.pipeline.shards.sample import meta_json

    images = _images(args.images, args.size)
    ids = args.images // args.per_identity
    samples = [
        Sample(i // args.per_identity, i % args.per_identity, images[i], meta={"seed": i})
        for i in range(ids * args.per_identity)
    ]
    plans = plan_shards([args.per_identity] * ids, max_samples=args.shard_samples)
    total_bytes = sum(len(s.image) for s in samples)
    n = len(samples)
    members = [
        [
            (f"{s.key}.cls", str(s.identity).encode()),
            (f"{s.key}.jpg", s.image),
            (f"{s.key}.json", meta_json(s)),
        ]
        for s in samples
    ]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def ours_write():
            for p in plans:
                lo, hi = (
                    p.first_identity * args.per_identity,
                    (p.last_identity + 1) * args.per_identity,
                )
                write_shard(root / "ours", p.index, samples[lo:hi])

        def plain_write():
            (root / "plain").mkdir(exist_ok=True)
            for p in plans:
                lo, hi = (
                    p.first_identity * args.per_identity,
                    (p.last_identity + 1) * args.per_identity,
                )
                with tarfile.open(root / "plain" / f"{p.index:06d}.tar", "w") as tar:
                    for sample_members in members[lo:hi]:
                        for name, data in sample_members:
                            info = tarfile.TarInfo(name)
                            info.size = len(data)
                            tar.addfile(info, io.BytesIO(data))

        t_plain_w = best(plain_write, args.repeat)[0]
        t_ours_w = best(ours_write, args.repeat)[0]
        finalize_dataset(root / "ours", config={"bench": True})
        plain_files = sorted((root / "plain").glob("*.tar"))

        def plain_read():
            got = 0
            for path in plain_files:
                with tarfile.open(path, "r|") as tar:
                    for info in tar:
                        got += len(tar.extractfile(info).read())
            return got

        def ours_iter():
            assert sum(1 for _ in iter_samples(root / "ours", decode=False)) == n

        def ours_wds():
            pipe = make_webdataset(root / "ours", shuffle_shards=False, buffer=0, decode=False)
            assert sum(1 for _ in pipe) == n

        def ours_index():
            ds = ShardIndexDataset(root / "ours", decode=False)
            assert sum(1 for i in range(len(ds)) if ds[i]) == n

        t_plain_r = best(plain_read, args.repeat)[0]
        results = {
            "iter_samples": best(ours_iter, args.repeat)[0],
            "make_webdataset": best(ours_wds, args.repeat)[0],
            "ShardIndexDataset (index build + in-order reads)": best(ours_index, args.repeat)[0],
        }
        size_mb = total_bytes / 1e6
        print(
            f"machine: {os.cpu_count()} CPUs; {n} images {args.size}px JPEG, {size_mb:.1f} MB image data, {len(plans)} shards"
        )
        print(f"{'':52s} {'images/s':>10s} {'MB/s':>8s} {'ratio':>6s}")
        print(
            f"{'write: plain tarfile':52s} {n / t_plain_w:10.0f} {size_mb / t_plain_w:8.1f} {'1.00':>6s}"
        )
        print(
            f"{'write: write_shard (+sha256, fsync, sidecar)':52s} {n / t_ours_w:10.0f} {size_mb / t_ours_w:8.1f} {t_plain_w / t_ours_w:6.2f}"
        )
        print(
            f"{'read: plain tarfile':52s} {n / t_plain_r:10.0f} {size_mb / t_plain_r:8.1f} {'1.00':>6s}"
        )
        for name, t in results.items():
            print(f"{'read: ' + name:52s} {n / t:10.0f} {size_mb / t:8.1f} {t_plain_r / t:6.2f}")


if __name__ == "__main__":
    main()
