"""What training through a view (``data.view``) costs the loader, per sampler.

    python bench/view_loader.py                        # 200 world identities x 10, 32 px
    python bench/view_loader.py --identities 1000 --batches 400

For each sampler (stream, balanced, random) the loader alone is timed twice on the same
procedural-world dataset: once whole, once through a view that leaves out every tenth
identity and the first image of every odd-numbered one. The view filter runs on sample
keys before any decoding (stream) or when the index is built (random access), so the
batches/s should stay within noise of the whole set's; the script also checks that no
left-out key was yielded. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--identities", type=int, default=200)
    p.add_argument("--per-identity", type=int, default=10)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    args = p.parse_args(argv)

    import torch

    from synthface.pipeline.config import validate_config
    from synthface.pipeline.qc.views import load_view, write_view
    from synthface.pipeline.shards import split_manifest
    from synthface.pipeline.world import make_world_dataset
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.training.data import inspect_dataset, open_batches
    from synthface.recognition.training.fields import key_code

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ds = Path(tmp) / "world"
        make_world_dataset(
            ds, identities=args.identities, per_identity=args.per_identity, size=args.size
        )
        n = args.identities
        write_view(
            ds,
            "bench",
            split="train",
            config_hash=split_manifest(ds)["config_hash"],
            num_identities=n,
            identity_counts=[args.per_identity] * n,
            excluded_identities={i: ["bench"] for i in range(0, n, 10)},
            excluded_samples={f"{i:08d}/0000": ["bench"] for i in range(1, n, 2) if i % 10},
            criteria={},
        )
        view = load_view(ds, "bench")
        results = {}
        for kind in ("stream", "balanced", "random"):
            for viewed in (None, "bench"):
                cfg = validate_config(
                    {
                        "data": {
                            "train": str(ds),
                            "batch_size": args.batch_size,
                            "num_workers": 0,
                            "shuffle_buffer": 1000,
                            "sampler": {"kind": kind},
                            "view": viewed,
                        },
                        "model": {"backbone": "tiny", "input_size": args.size},
                    },
                    TrainConfig,
                )
                best, leaked = float("inf"), 0
                for r in range(args.repeats):
                    info = inspect_dataset(cfg.data)
                    t0 = time.perf_counter()
                    batches = open_batches(
                        info,
                        cfg.data,
                        num_batches=args.batches,
                        seed=r,
                        fields={"code": lambda s: float(key_code(s["__key__"]))},
                    )
                    for _, batch in zip(range(args.batches), batches):
                        if viewed:
                            leaked += sum(
                                not view.keep(f"{int(c) // 10000:08d}/{int(c) % 10000:04d}")
                                for c in batch.fields["code"].tolist()
                            )
                    best = min(best, time.perf_counter() - t0)
                results[f"{kind}{'+view' if viewed else ''}"] = {
                    "batches_per_s": round(args.batches / best, 1),
                    "classes": info.num_classes,
                    "samples": info.num_samples,
                    **({"left_out_samples_yielded": leaked} if viewed else {}),
                }
    json.dump({"args": vars(args), "results": results}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
