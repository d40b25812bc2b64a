"""Seconds per generator training step: pixel space vs the world VQ-f4 latent space.

One optimizer step (forward, backward, AdamW) of the world configs' denoiser at equal
batch, on world images rendered here, with the demo recognizer (32 px, 128-d) as the
frozen identity encoder:

* ``pixel32``: configs/generators/id3_world.yaml (32 px pixel space);
* ``latent64``: configs/generators/id3_world64.yaml (64 px images, 16x16x3 latents) with
  the identity term on the whole batch, on ``id3.id_loss_fraction`` 0.25, every 4 steps,
  and without it (plain);
* ``pixel64`` (``--pixel64``): the same UNet on 64 px pixels, for scale.

The autoencoder is ``--autoencoder`` (a trained final/) or an untrained one of
configs/autoencoders/vq_world64.yaml's shape: the cost is the same.

    python bench/latent_world_step.py --batch 32 --steps 4 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from synthface.generators.autoencoder import build_autoencoder
from synthface.generators.base import GENERATORS
from synthface.generators.config import GeneratorConfig
from synthface.generators.encoder import load_identity_encoder
from synthface.generators.sampling import make_scheduler
from synthface.generators.training import make_batch, training_loss
from synthface.pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECOGNIZER = ROOT / "data/demo/models/recognizer/model"


def world_samples(n: int, size: int) -> list[dict]:
    from synthface.pipeline.world.dataset import render_images

    jobs = [(i // 4, i % 4, None) for i in range(n)]
    return [
        {"__key__": f"{i:08d}/{j:04d}", "image": img, "label": i, "meta": meta, "embedding": None}
        for i, j, img, meta in render_images(jobs, seed=0, split="train", size=size)
    ]


def time_steps(cfg: GeneratorConfig, samples, encoder, steps: int, use_id: bool) -> dict:
    gen_cls = GENERATORS.get(cfg.generator)
    ae = build_autoencoder(cfg.autoencoder)  # first: a loaded model sets the latent shape
    cfg.check_sizes()
    torch.manual_seed(0)
    model = gen_cls.build_denoiser(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = make_scheduler("ddpm", cfg.diffusion)
    batch = make_batch(samples, cfg, encoder)
    times = []
    for step in range(steps + 1):  # step 0 warms up
        t0 = time.perf_counter()
        loss, _ = training_loss(
            model,
            ae,
            encoder,
            batch,
            cfg,
            torch.Generator().manual_seed(step),
            scheduler=scheduler,
            use_identity_loss=use_id,
            step=step,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step:
            times.append(time.perf_counter() - t0)
    return {"mean_s": round(statistics.mean(times), 3), "min_s": round(min(times), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--steps",
        type=int,
        default=4,
        help="timed steps per setting, after one warm-up (use a multiple of 4: the every-4 "
        "setting applies the identity term on steps 4, 8, ...)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--autoencoder", help="trained autoencoder directory (default: untrained)")
    ap.add_argument("--pixel64", action="store_true", help="also time 64 px pixel space")
    ap.add_argument("--only", help="time only the settings whose label contains this")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    encoder = load_identity_encoder(RECOGNIZER, differentiable=True)
    with torch.no_grad():
        dim = encoder(torch.zeros(1, 3, 32, 32)).shape[1]
    common = [f"conditioning.identity_dim={dim}", f"train.batch_size={args.batch}"]
    tmp = Path(tempfile.mkdtemp())
    ae_path = args.autoencoder
    if ae_path is None:
        from synthface.generators.autoencoder_training import AutoencoderTrainConfig, build_model

        ae_cfg = load_config(ROOT / "configs/autoencoders/vq_world64.yaml", AutoencoderTrainConfig)
        build_model(ae_cfg.model).save_pretrained(tmp / "vq", safe_serialization=True)
        ae_path = str(tmp / "vq")
    s32, s64 = world_samples(args.batch, 32), world_samples(args.batch, 64)
    pixel = ROOT / "configs/generators/id3_world.yaml"
    latent = ROOT / "configs/generators/id3_world64.yaml"
    runs = [
        ("pixel32 id3 (identity term, whole batch)", pixel, [], s32, True),
        ("pixel32 plain", pixel, [], s32, False),
        ("latent64 id3 fraction 1", latent, ["id3.id_loss_fraction=1.0"], s64, True),
        ("latent64 id3 fraction 0.25", latent, ["id3.id_loss_fraction=0.25"], s64, True),
        (
            "latent64 id3 fraction 1, every 4",
            latent,
            ["id3.id_loss_fraction=1.0", "id3.id_loss_every=4"],
            s64,
            True,
        ),
        ("latent64 plain", latent, [], s64, False),
    ]
    if args.pixel64:
        runs.append(("pixel64 plain", pixel, ["image_size=64"], s64, False))
    results = {}
    for label, path, extra, samples, use_id in runs:
        if args.only and args.only not in label:
            continue
        overrides = [*common, *extra]
        if path == latent:
            overrides.append(f"autoencoder.path={ae_path}")
        cfg = load_config(path, GeneratorConfig, overrides)
        results[label] = time_steps(cfg, samples, encoder, args.steps, use_id)
        print(f"{label:40s} {results[label]['mean_s']:.3f} s/step", flush=True)
    if not args.only or "encode" in args.only or "latent" in args.only:
        ae = build_autoencoder(
            load_config(
                latent, GeneratorConfig, [*common[:1], f"autoencoder.path={ae_path}"]
            ).autoencoder
        )
        x = make_batch(s64, load_config(latent, GeneratorConfig, common), encoder).images
        times = []
        for _ in range(args.steps + 1):
            t0 = time.perf_counter()
            ae.encode(x)
            times.append(time.perf_counter() - t0)
        results["latent64 autoencoder encode only (in every latent step)"] = {
            "mean_s": round(statistics.mean(times[1:]), 3),
            "min_s": round(min(times[1:]), 3),
        }
        print(f"{'latent64 encode only':40s} {statistics.mean(times[1:]):.3f} s/step", flush=True)
    doc = {"batch": args.batch, "threads": args.threads, "steps": args.steps, "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
