"""Import a FULL-SIZE released-layout UIFace checkpoint, then sample it: time both.

Nothing can be downloaded here, so the three released files are rebuilt with random
values at their real names and shapes (``ema_averaged_model_250000.ckpt``: the 216M
UNet under ``module.eps_model.`` plus the 8 DDPM buffers; the two LDM VQ-f4 files), saved
with ``torch.save`` into ``--workdir`` (~1 GB, deleted at the end unless ``--keep``).
Names come from the converter's own map (the tests check that map against an
independent description of the reference); values are random, so the images are noise
and only the costs mean anything.

Measured: the import as ``synthface generator import-uiface`` runs it (default config,
default space), the sha256 of the source files that it records as provenance, loading
the imported generator, and sampling with the imported architecture at 128 px (3x32x32
latents): DDIM two-stage at two step counts, so that the difference gives the cost of a
denoising step without the fixed cost (VQ decode, setup); one thread unless ``--threads``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/uiface_import.py --workdir /tmp/uiface_import
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch


def released_files(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Random tensors at the released names and shapes, saved as the release saved them."""
    from diffusers import VQModel

    from synthface.generators.uiface.convert import (
        SCHEDULE_BUFFERS,
        VQ_F4,
        default_import_config,
        unet_reference_name,
        vq_reference_name,
    )
    from synthface.generators.uiface.denoiser import build_uiface_unet

    cfg = default_import_config()
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        unet = build_uiface_unet(cfg)
        vq = VQModel(**VQ_F4)
    state = {}
    for name, t in unet.state_dict().items():
        ref, conv1d = unet_reference_name(name, unet.config)
        shape = tuple(t.shape) + ((1,) if conv1d else ())
        state["module.eps_model." + ref] = torch.randn(shape, generator=g) * 0.02
    d = cfg.diffusion
    betas = torch.linspace(d.beta_start, d.beta_end, d.num_train_timesteps)
    for name in SCHEDULE_BUFFERS:
        state["module." + name] = betas if name == "betas" else torch.rand(len(betas))
    enc, dec = {}, {}
    for name, t in vq.state_dict().items():
        ref, conv = vq_reference_name(name, len(VQ_F4["block_out_channels"]))
        shape = tuple(t.shape) + ((1, 1) if conv else ())
        side = enc if name.startswith(("encoder.", "quant_conv.")) else dec
        side[ref] = torch.randn(shape, generator=g) * 0.02
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "unet": folder / "ema_averaged_model_250000.ckpt",
        "enc": folder / "first_stage_encoder_state_dict.pt",
        "dec": folder / "first_stage_decoder_state_dict.pt",
    }
    for key, obj in (("unet", state), ("enc", enc), ("dec", dec)):
        torch.save(obj, paths[key])
    return paths


def _clock():
    return time.perf_counter(), time.process_time()


def _since(start) -> dict:
    wall, cpu = _clock()
    return {"wall_s": round(wall - start[0], 2), "cpu_s": round(cpu - start[1], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/uiface_import_bench")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=2, help="images per sampling run")
    ap.add_argument("--steps", default="2,4", help="two DDIM step counts")
    ap.add_argument("--keep", action="store_true", help="keep the ~2 GB of files")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    if work.exists():
        raise SystemExit(f"{work}: exists; give a new --workdir")
    report: dict = {"threads": args.threads, "cpu": os.cpu_count()}
    try:
        t = _clock()
        files = released_files(work / "released")
        report["build_files"] = _since(t)
        report["file_bytes"] = {k: p.stat().st_size for k, p in files.items()}

        from synthface.generators.uiface.convert import import_uiface
        from synthface.pipeline.atomic import file_sha256

        t = _clock()
        for p in files.values():
            file_sha256(p)
        report["sha256_of_sources"] = _since(t)
        t = _clock()
        info = import_uiface(files["unet"], files["enc"], files["dec"], work / "uiface")
        report["import"] = _since(t)
        report["import_info"] = info
        report["imported_bytes"] = sum(
            f.stat().st_size for f in (work / "uiface").rglob("*") if f.is_file()
        )
        for p in files.values():
            p.unlink()  # what sampling needs is the imported directory

        from synthface.generators.base import load_generator

        t = _clock()
        gen = load_generator(work / "uiface")
        report["load_generator"] = _since(t)
        contexts = np.random.default_rng(0).standard_normal((args.images, 512)).astype("f4")
        contexts /= np.linalg.norm(contexts, axis=1, keepdims=True)
        runs = {}
        for steps in (int(s) for s in args.steps.split(",")):
            meta: list[dict] = []
            t = _clock()
            images = gen.generate(
                contexts,
                None,
                list(range(args.images)),
                sampler="ddim",
                steps=steps,
                batch_size=args.images,
                sample_meta=meta,
            )
            runs[steps] = {
                **_since(t),
                "shape": list(images.shape),
                "switch_timesteps": [m["uiface"]["switch_timestep"] for m in meta],
            }
        report["sampling"] = runs
        (a, ra), (b, rb) = sorted(runs.items())
        per_step = (rb["cpu_s"] - ra["cpu_s"]) / (b - a) / args.images
        fixed = ra["cpu_s"] / args.images - a * per_step
        report["cpu_s_per_image_per_step"] = round(per_step, 3)
        report["cpu_s_per_image_fixed"] = round(fixed, 3)
        report["extrapolated_cpu_s_per_image"] = {
            "dpmpp_2m_25": round(fixed + 25 * per_step, 1),
            "ddim_50 (reference)": round(fixed + 50 * per_step, 1),
        }
        report["max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
