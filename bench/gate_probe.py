"""What a perfect generator scores on the face gate: real world faces of other world seeds,
drawn with a generated set's structure, scored against a real set by a judge.

    .venv/bin/python bench/gate_probe.py --judge JUDGE --real REAL --out out/quality/gate_probe

(docs/benchmarks.md, "The face gate calibrated"; JUDGE and REAL are the table's
``stages/recognizer/judge-*/run/model`` and ``stages/real/world-*/data``.) Prints, per
structure (identities x images at n images), the reference's floor and texture control and
each world seed's FD, floor, texture and face score.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", required=True)
    ap.add_argument("--real", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    args = ap.parse_args()

    from synthface.generators.benchmark.distance import real_reference, set_distance
    from synthface.pipeline.world import make_world_dataset

    out = Path(args.out)
    for n, ids, per in ((128, 16, 8), (480, 48, 10)):
        ref_dir = out / f"ref{n}"
        ref_dir.mkdir(parents=True, exist_ok=True)
        ref = real_reference(ref_dir, args.judge, args.real, images=n, device="cpu")
        print(f"{ids} x {per} at n = {n}: reference floor {ref['fd_real_floor']}, "
              f"texture {ref['fd_texture']}")  # fmt: skip
        for seed in args.seeds:
            world = out / f"world{seed}_{ids}x{per}"
            if not world.exists():
                make_world_dataset(world, identities=ids, per_identity=per, size=32, seed=seed)
            d = set_distance(ref_dir, args.judge, str(world), ref, real=args.real, device="cpu")
            print(f"  world seed {seed}: FD {d['fd']} floor {d['fd_floor']} "
                  f"texture {d['fd_texture']} face score {d['face_score']}")  # fmt: skip


if __name__ == "__main__":
    main()
