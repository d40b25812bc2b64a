"""RecordIO export (``shards to-rec``) throughput against the shard reader alone, same run.

    python bench/rec_export.py [--images 20000] [--size 112] [--repeat 3]

Baseline = ``iter_raw`` over every shard (the tar walk that ``to_rec`` itself reads with),
touching each image's bytes. Ours = ``to_rec``: the same read plus the image-size check,
IRHeader packing, dmlc record framing, ``.idx`` lines, sha-free atomic writes (fsync +
rename) of ``train.rec``/``train.idx``/``property``. The ratio is export time / read time.
Memory: ``tracemalloc`` peak of Python allocations during ``to_rec`` on the dataset and on
a quarter of it; streaming means the two peaks are about equal. Reads come from the page
cache (the shards were just written). Best of --repeat.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import timeit
import tracemalloc
from pathlib import Path

import numpy as np


def _dataset(root: Path, n: int, size: int, per_identity: int) -> int:
    from synthface.pipeline.shards import DatasetWriter, Sample, encode_image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    total = 0
    with DatasetWriter(root, config={"bench": "rec_export", "n": n}, max_samples=2000) as w:
        for i in range(n):
            img = np.roll(base, i, axis=0)  # distinct, JPEG-realistic sizes
            img[: size // 4] = (i * 37) % 256
            data = encode_image(img, "jpg", quality=90)
            total += len(data)
            w.add(Sample(i // per_identity, i % per_identity, data))
        w.close()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--per-identity", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from synthface.pipeline.shards import shard_paths
    from synthface.pipeline.shards.index_reader import iter_raw
    from synthface.pipeline.shards.rec import to_rec

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n = args.images
        image_bytes = _dataset(root / "ds", n, args.size, args.per_identity)
        _dataset(root / "small", n // 4, args.size, args.per_identity)

        def read_only():
            got = 0
            for shard in shard_paths(root / "ds"):
                for raw in iter_raw(shard):
                    got += len(raw["jpg"])
            assert got == image_bytes

        def export():
            to_rec(root / "ds", root / "rec")

        t_read = min(timeit.repeat(read_only, number=1, repeat=args.repeat))
        t_export = min(timeit.repeat(export, number=1, repeat=args.repeat))

        peaks = {}
        for name in ("small", "ds"):
            tracemalloc.start()
            to_rec(root / name, root / f"rec-{name}")
            peaks[name] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        mb = image_bytes / 1e6
        rec_mb = (root / "rec" / "train.rec").stat().st_size / 1e6
        print(
            f"machine: {os.cpu_count()} CPUs; {n} images {args.size}px JPEG, {mb:.1f} MB image "
            f"data, .rec {rec_mb:.1f} MB; best of {args.repeat}"
        )
        print(f"{'':40s} {'images/s':>10s} {'MB/s':>8s} {'time ratio':>10s}")
        print(
            f"{'shard reader alone (iter_raw)':40s} {n / t_read:10.0f} {mb / t_read:8.1f} {1:10.2f}"
        )
        print(
            f"{'to_rec (read + pack + write + fsync)':40s} {n / t_export:10.0f} "
            f"{mb / t_export:8.1f} {t_export / t_read:10.2f}"
        )
        print(
            f"tracemalloc peak during to_rec: {peaks['small'] / 1e6:.2f} MB for {n // 4} images, "
            f"{peaks['ds'] / 1e6:.2f} MB for {n} images"
        )


if __name__ == "__main__":
    main()
