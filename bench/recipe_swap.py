"""Train the shipped demo generator's recipe with one thing swapped, then sample it.

The benchmark's generators drew textures where the demo generator, with the same code,
draws heads (docs/benchmarks.md, "Data or encoder?"). This trains the recipe recorded in
``data/demo/models/generator/final/config.json`` on other world shards (``--data``), with
another identity encoder (``--encoder``) and any ``--set`` overrides, and samples 16 x 8
images with the table's sampler into ``OUT/samples`` so that ``bench/world_generator_quality.py``
can score several runs against one judge:

    .venv/bin/python bench/recipe_swap.py out/swap/table-enc --steps 1500 \\
        --data out/benchmark/cpu/stages/real/world-976a0b664e95/data \\
        --encoder out/benchmark/cpu/stages/recognizer/encoder-2285786faa26/run/model \\
        --set id3.id_loss_weight=0

A rerun resumes the training and replaces the samples.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "data/demo/models/generator/final/config.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="folder for the generator (OUT/final) and samples (OUT/samples)")
    ap.add_argument("--data", required=True, help="world shards to train on")
    ap.add_argument("--encoder", required=True, help="identity encoder (torch recognizer)")
    ap.add_argument("--set", action="append", default=[], help="override, KEY.PATH=VALUE")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--identities", type=int, default=16)
    args = ap.parse_args()

    import torch

    from synthface.generators.config import GeneratorConfig
    from synthface.generators.training import train_generator
    from synthface.pipeline.cli import main as cli
    from synthface.pipeline.config import apply_overrides

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    cfg = json.loads(RECIPE.read_text())["config"]
    cfg["data"]["path"] = str(Path(args.data).resolve())
    cfg["encoder"]["path"] = str(Path(args.encoder).resolve())
    cfg["train"].update(
        output_dir=str(out.resolve()),
        steps=args.steps,
        log_every=100,
        checkpoint_every=500,
        keep_checkpoints=10,
    )
    cfg = GeneratorConfig.model_validate(apply_overrides(cfg, args.set))

    def log(row: dict) -> None:
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)

    train_generator(cfg, log=log)
    samples = out / "samples"
    shutil.rmtree(samples, ignore_errors=True)
    # as the table samples (configs/benchmark/cpu.yaml: dpmpp_2m, 10 steps), inside the
    # training identities' region
    cli([
        "--quiet", "generator", "sample", str(out / "final"), "--out", str(samples),
        "--identities", str(args.identities), "--per-identity", "8",
        "--sampler", "dpmpp_2m", "--steps", "10", "--anchor-region", "sphere", "--no-report",
        "--threads", str(args.threads),
    ])  # fmt: skip
    print(f"samples: {samples}")


if __name__ == "__main__":
    main()
