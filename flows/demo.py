"""``make demo`` (``python -m synthface.flows.demo``): a synthetic dataset from nothing, on a CPU.

The project cannot download face data or weights, so everything ID³ needs comes from
the project itself, each stage as a Prefect flow on the ephemeral API (state in
``./.prefect/``):

1. a procedural face world (``synthface.pipeline.world.make_world_dataset``), the training data;
2. ``train-recognizer``: a tiny iResNet on the world, the frozen identity encoder;
3. ``train-generator``: an ID³ generator conditioned on that recognizer;
4. ``generate-synthetic`` with the embedded default config (``configs/generate/default.yaml``),
   its report's contact sheet showing real heads of the world above the generated ones.

Everything is written under ``./out/demo/`` (``./`` is ``$SYNTHFACE_HOME`` when set, else
the current directory: the repository root for ``make demo``); finished stages are kept
and skipped on the next run (``--fresh`` starts over). Steps 2 and 3 are skipped
altogether when the models shipped in ``data/demo/models`` (package data
``synthface.data``) are there (a recognizer and an ID³ generator this project trained on
the same world with the command next to ``SHIPPED_MODELS_DIR``): then the demo takes
about a minute and draws face images. Without them (``--models out/demo/models``) the
demo trains both inside about 10 minutes on 2 CPU cores, which buys only 60 generator
steps, far too few for faces (the QC report flags most identities as not separated).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from synthface.flows.defaults import DEFAULT_CONFIG_REF, prepare_prefect_env
from synthface.pipeline.paths import DATA_PACKAGE, config_source, home, package_dir
from synthface.pipeline.termination import exit_on_sigterm

# Under home(): $SYNTHFACE_HOME, else the current directory (the repo root for `make demo`).
DEMO_DIR = Path("out") / "demo"
# The shipped demo models (preferred over training minutes-old ones) were made by:
#   python -m synthface.flows.demo --models data/demo/models --recognizer-epochs 12 --generator-steps 3000
# (then only recognizer/model and generator/final are kept; see data/README.md).
SHIPPED_MODELS_DIR = "demo/models"  # in the package data synthface.data (data/ in the repo)
IMAGE_SIZE = 32
EMBEDDING_DIM = 128
WORLD_DIR = "world"  # under the demo folder; also the report's real reference
WORLD_IDENTITIES = 96
WORLD_PER_IDENTITY = 12
RECOGNIZER_EPOCHS = 6
GENERATOR_STEPS = 60


def recognizer_config(root: Path, models: Path, epochs: float = RECOGNIZER_EPOCHS):
    from synthface.recognition.config import TrainConfig

    return TrainConfig.model_validate(
        {
            "data": {
                "train": str(root / WORLD_DIR),
                "batch_size": 64,
                "num_workers": 0,
                "shuffle_buffer": 500,
            },
            "model": {"backbone": "tiny", "input_size": IMAGE_SIZE, "embedding_dim": EMBEDDING_DIM},
            # the recipe the shipped demo recognizer was trained with (not arcface_torch's)
            "head": {
                "name": "arcface",
                "params": {"scale": 32.0, "margin": 0.3, "formulation": "threshold"},
            },
            "optim": {
                "name": "adamw",
                "lr": 2e-3,
                "weight_decay": 5e-4,
                "decay_norm_and_bias": False,
            },
            "schedule": {"kind": "cosine"},
            "train": {
                "output_dir": str(models / "recognizer"),
                "epochs": epochs,
                "device": "cpu",
            },
            "augment": {"flip": {"p": 0.0}},
            "checkpoint": {"every_steps": 0, "keep": 1},
            "logging": {"every_steps": 50},
        }
    )


def generator_config(root: Path, models: Path, encoder: Path, steps: int = GENERATOR_STEPS):
    from synthface.generators.config import GeneratorConfig
    from synthface.pipeline.config import load_config

    base = load_config(config_source("synthface:generators/id3_world.yaml"), GeneratorConfig)
    data = base.model_dump(mode="json")
    data["image_size"] = IMAGE_SIZE
    # Two resolution levels instead of three: the demo's budget is minutes of CPU.
    data["unet"].update({"block_out_channels": [32, 64], "cross_attention_levels": [False, True]})
    data["conditioning"]["identity_dim"] = EMBEDDING_DIM
    data["conditioning"]["mlp_hidden"] = [256, 128]
    data["sampler"].update({"steps": 20, "batch_size": 64})
    data["id3"]["anchor_iterations"] = 100
    data["encoder"]["path"] = str(encoder)
    data["data"].update({"source": "shards", "path": str(root / WORLD_DIR), "shuffle_buffer": 500})
    data["train"].update(
        {
            "steps": steps,
            "batch_size": 16,
            # Periodic checkpoints let a long training of shipped models resume.
            "checkpoint_every": min(steps, 200),
            "log_every": 10,
            "output_dir": str(models / "generator"),
        }
    )
    return GeneratorConfig.model_validate(data)


def generate_config(root: Path, models: Path):
    """The embedded default with the demo's models, and the demo's world as the report's
    real reference, so the contact sheet shows real world heads above the generated ones."""
    from synthface.flows.defaults import load_generate_config

    cfg = load_generate_config(None)
    gen_dir = models / "generator" / "final"
    rec_dir = models / "recognizer" / "model"
    if Path(cfg.generator.checkpoint).resolve() != gen_dir.resolve():
        print(
            f"demo: using generator {gen_dir} instead of {cfg.generator.checkpoint} ({DEFAULT_CONFIG_REF})"
        )
        # The generator and the encoder it was conditioned on travel together.
        swapped = {"checkpoint": str(gen_dir), "encoder": str(rec_dir)}
        cfg = cfg.model_copy(update={"generator": cfg.generator.model_copy(update=swapped)})
    report = cfg.report.model_copy(update={"reference": str(root / WORLD_DIR)})
    return cfg.model_copy(update={"report": report})


def _stage(name: str, t0: float) -> None:
    print(f"demo: {name} done ({time.perf_counter() - t0:.0f}s)", flush=True)


def _replace_stale_dataset(cfg, root: Path) -> None:
    """The demo's dataset folder is its own: one made by another version or other models
    (its identity differs) is replaced, where a user's dataset would be refused."""
    from synthface.generators.dataset import prepare_generation
    from synthface.pipeline.errors import ShardError

    out = Path(cfg.output.dir)
    if not out.is_dir() or not out.resolve().is_relative_to(root.resolve()):
        return
    quiet = logging.getLogger("synthface.generators.dataset.prepare")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warnings come again from the flow's plan step
    try:
        prepare_generation(cfg)  # the flow's plan step repeats it and resumes
    except ShardError as exc:
        if "already holds a different" not in str(exc):
            raise
        print(f"demo: {out} holds an older demo dataset; generating it again", flush=True)
        shutil.rmtree(out)
    finally:
        quiet.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m synthface.flows.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete ./out/demo (under $SYNTHFACE_HOME) first"
    )
    shipped = package_dir(DATA_PACKAGE) / SHIPPED_MODELS_DIR
    has_shipped = (shipped / "generator" / "final" / "config.json").is_file()
    parser.add_argument(
        "--models",
        type=Path,
        default=shipped if has_shipped else home() / DEMO_DIR / "models",
        help="folder of recognizer/model and generator/final; trained there when missing "
        "(default: the shipped demo models, data/demo/models, else ./out/demo/models)",
    )
    parser.add_argument("--recognizer-epochs", type=float, default=RECOGNIZER_EPOCHS)
    parser.add_argument("--generator-steps", type=int, default=GENERATOR_STEPS)
    args = parser.parse_args(argv)
    from synthface.pipeline.errors import SynthfaceError

    try:
        return run(
            fresh=args.fresh,
            models=args.models.resolve(),
            recognizer_epochs=args.recognizer_epochs,
            generator_steps=args.generator_steps,
        )
    except SynthfaceError as exc:
        print(f"synthface: error: {exc}", file=sys.stderr)
        return 1


def run(
    *,
    fresh: bool = False,
    root: Path | None = None,
    models: Path | None = None,
    recognizer_epochs: float = RECOGNIZER_EPOCHS,
    generator_steps: int = GENERATOR_STEPS,
) -> int:
    root = root or home() / DEMO_DIR
    models = models or root / "models"
    t_all = time.perf_counter()
    if fresh and root.exists():
        shutil.rmtree(root)
    prepare_prefect_env()
    import torch

    torch.set_num_threads(2)
    from synthface.flows.generate import generate_synthetic
    from synthface.flows.training import train_generator, train_recognizer

    cfg = generate_config(root, models)
    gen_dir = models / "generator" / "final"
    rec_dir = models / "recognizer" / "model"

    t0 = time.perf_counter()
    world = root / WORLD_DIR
    if not (world / "dataset.json").is_file():
        from synthface.pipeline.world import make_world_dataset

        make_world_dataset(
            world,
            identities=WORLD_IDENTITIES,
            per_identity=WORLD_PER_IDENTITY,
            size=IMAGE_SIZE,
            seed=0,
        )
    _stage(f"world: {WORLD_IDENTITIES} identities x {WORLD_PER_IDENTITY} images in {world}", t0)

    t0 = time.perf_counter()
    if not (rec_dir / "config.json").is_file():
        train_recognizer(config=recognizer_config(root, models, recognizer_epochs))
    _stage(f"recognizer: {rec_dir}", t0)

    t0 = time.perf_counter()
    if not (gen_dir / "config.json").is_file():
        train_generator(config=generator_config(root, models, rec_dir, generator_steps))
        out = Path(cfg.output.dir)
        if out.is_dir() and out.resolve().is_relative_to(root.resolve()):
            # The demo's previous dataset came from the previous generator: replace it.
            shutil.rmtree(out)
    _stage(f"ID³ generator: {gen_dir}", t0)

    t0 = time.perf_counter()
    _replace_stale_dataset(cfg, root)
    summary = generate_synthetic(config=cfg)
    _stage("generate-synthetic", t0)
    report = summary.get("report", {})
    print(
        "\n".join(
            [
                "",
                f"dataset:       {summary['dataset_dir']} ({summary['num_identities']} identities, "
                f"{summary['num_samples']} samples)",
                f"shards:        {summary['shards_dir']}",
                f"QC view:       {summary['view']} ({summary['view_identities']} identities kept)",
                f"report:        {report.get('markdown', '-')}",
                f"contact sheet: {report.get('contact_sheet', '-')}",
                f"total:         {time.perf_counter() - t_all:.0f}s",
            ]
        )
    )
    return 0


if __name__ == "__main__":
    with exit_on_sigterm():
        code = main()
    sys.exit(code)
