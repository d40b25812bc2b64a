"""Does a world generator draw the world's heads, and does it follow the pose it is asked?

For generated shard sets (``synthface generator sample`` / ``generate-synthetic`` output
of generators trained on the procedural world), measured with models the generators
never saw (one reference and one regressor for all sets of a run):

* **faces or textures**: the Fréchet distance of its images to real world images in an
  independent judge's embedding space, with the benchmark's face gate
  (``synthface.generators.benchmark.distance``: 1 = as close as other real faces,
  0 = as far as phase-scrambled real images);
* **pose**: a small regressor trained on world images with ground-truth yaw/pitch/roll/age
  (``synthface.generators.benchmark.variation``) predicts each generated image's pose;
  reported: the within-identity spread predicted vs asked (the condition in each
  sample's metadata), the same for real world images, and the correlation between asked
  and predicted yaw over all generated images (does the pose follow the condition?).

    .venv/bin/python bench/world_generator_quality.py --generated out/a out/b \\
        --judge out/judge/model --real out/world64/eval --world-train out/world64/train \\
        --world-heldout out/world64/eval --out out/quality/demo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ATTRIBUTES = ("yaw", "pitch", "roll", "age")


def _asked_and_predicted(regressor_dir: Path, dataset: str, limit: int):
    from synthface.generators.benchmark.variation import load_regressor, predict
    from synthface.pipeline.shards import iter_samples

    regressor = load_regressor(regressor_dir)
    images, asked = [], []
    for s in iter_samples(dataset):
        if len(images) >= limit:
            break
        attrs = (s.get("meta") or {}).get("attributes") or {}
        images.append(s["image"])
        asked.append([float(attrs.get(a, np.nan)) for a in ATTRIBUTES])
    return np.array(asked), predict(regressor, np.stack(images))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generated", required=True, nargs="+", help="generated shard datasets")
    ap.add_argument("--judge", required=True, help="recognizer the generator never saw")
    ap.add_argument("--real", required=True, help="real world images for the FD reference")
    ap.add_argument("--world-train", required=True, help="world shards (regressor training)")
    ap.add_argument("--world-heldout", required=True, help="world shards (regressor error)")
    ap.add_argument("--out", required=True, help="folder for the reference and regressor")
    ap.add_argument("--images", type=int, default=128, help="images per FD set")
    ap.add_argument("--regressor-steps", type=int, default=600)
    ap.add_argument("--regressor-size", type=int, default=64)
    args = ap.parse_args()

    from synthface.generators.benchmark.distance import real_reference, set_distance
    from synthface.generators.benchmark.variation import measure_set, train_regressor

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    reference = real_reference(out, args.judge, args.real, images=args.images, device="cpu")
    regressor = train_regressor(
        out,
        args.world_train,
        args.world_heldout,
        attributes=ATTRIBUTES,
        size=args.regressor_size,
        steps=args.regressor_steps,
        batch_size=64,
        lr=3e-3,
    )
    result = {
        "reference": {k: reference[k] for k in ("images", "fd_real_floor", "fd_texture")},
        "regressor_heldout_mae": regressor["held_out_mae"],
        "regressor_heldout_corr": regressor["held_out_corr"],
        "spread_real_heldout": measure_set(str(out), args.world_heldout, max_identities=10**9),
        "sets": {},
    }
    for dataset in args.generated:
        asked, pred = _asked_and_predicted(out, dataset, 10**6)
        follow = {}
        for k, a in enumerate(ATTRIBUTES):
            ok = np.isfinite(asked[:, k])
            if ok.sum() > 2 and asked[ok, k].std() > 0:
                follow[a] = round(float(np.corrcoef(asked[ok, k], pred[ok, k])[0, 1]), 3)
        result["sets"][dataset] = {
            "distance": set_distance(
                out, args.judge, dataset, reference, real=args.real, device="cpu"
            ),
            "spread": measure_set(str(out), dataset, max_identities=10**9),
            "asked_vs_predicted_corr": follow,
        }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "quality.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
