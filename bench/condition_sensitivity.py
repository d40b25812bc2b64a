"""How strongly a pixel-space world generator listens to each of its conditions.

A generator that ignores its pose condition still draws heads, so sample quality cannot
show it early; its noise prediction can. For real world images noised to ``t`` this prints
the RMS change of the predicted noise when one condition changes and the rest stay:

* ``yaw mirror``: yaw -> -yaw (the head turns the other way);
* ``age``: age -> 100 - age;
* ``identity``: another identity's embedding (the generator's own encoder);
* ``null``: the unconditional (dropped) tokens instead of both.

A model that follows yaw moves its prediction about as much for a mirrored yaw as for
another age (the shipped demo: 0.023 vs 0.016 at t = 400); one that ignores it barely
moves (docs/benchmarks.md, "The pose condition"). One shard dataset of world images with
``attributes`` in its metadata, any number of checkpoints:

    .venv/bin/python bench/condition_sensitivity.py --world out/repro_demo/world \\
        data/demo/models/generator/final out/repro_demo/generator/final
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="generator checkpoint folders")
    ap.add_argument("--world", required=True, help="world shards with pose/age metadata")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--timesteps", type=int, nargs="+", default=[100, 400, 700])
    args = ap.parse_args()

    import torch

    from synthface.generators.base import load_generator
    from synthface.generators.benchmark.distance import spread_samples
    from synthface.generators.encoder import load_identity_encoder
    from synthface.generators.sampling import make_scheduler

    torch.set_num_threads(1)
    rows = [
        (s["image"], s["meta"]["attributes"])
        for s in spread_samples(args.world, args.images)  # spread over identities
    ]
    x0 = torch.from_numpy(np.stack([r[0] for r in rows])).permute(0, 3, 1, 2).float() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    for path in args.checkpoints:
        gen = load_generator(path)
        cfg = gen.config
        if cfg.autoencoder.kind != "none" or x0.shape[-1] != cfg.image_size:
            raise SystemExit(f"{path}: needs a pixel-space generator at the world's size")
        names = [a.name for a in cfg.conditioning.attributes]
        scales = torch.tensor([a.scale for a in cfg.conditioning.attributes])
        attrs = torch.tensor([[float(m[n]) for n in names] for _, m in rows]) / scales
        with torch.no_grad():
            encoder = load_identity_encoder(cfg.encoder.path)
            ids = torch.from_numpy(encoder.embed_uint8(np.stack([r[0] for r in rows])))
        changed = {"null": None, "identity": (ids.roll(len(ids) // 2, 0), attrs)}
        if "yaw" in names:
            a = attrs.clone()
            a[:, names.index("yaw")] *= -1
            changed["yaw mirror"] = (ids, a)
        if "age" in names:
            a = attrs.clone()
            k = names.index("age")
            a[:, k] = 100.0 / scales[k] - a[:, k]
            changed["age"] = (ids, a)
        den = gen.denoiser.eval()
        sched = make_scheduler("ddpm", cfg.diffusion)
        for t in args.timesteps:
            tt = torch.full((len(x0),), t, dtype=torch.long)
            xt = sched.add_noise(x0, noise, tt)
            with torch.no_grad():
                base = den(xt, tt, identity=ids, attributes=attrs)
                parts = []
                for name, cond in changed.items():
                    if cond is None:
                        out = den(xt, tt, tokens=den.cond.null(len(x0)))
                    else:
                        out = den(xt, tt, identity=cond[0], attributes=cond[1])
                    parts.append(f"{name} {float(((out - base) ** 2).mean().sqrt()):.4f}")
            print(f"{path}  t={t}: " + ", ".join(parts), flush=True)


if __name__ == "__main__":
    main()
