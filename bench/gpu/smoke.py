"""Every training and inference path once, for a few steps, on one GPU (or ``--cpu``).

Paths, each reported as one line ``PATH ok|FAIL SECONDS`` (exit status 1 if any failed):

* ``world``: a small procedural-world dataset (the training data of everything below);
* ``recognizer-train`` / ``recognizer-resume``: the recognizer trainer, bf16, stopped at
  step 2 and resumed to step 4 from its checkpoint;
* ``recognizer-onnx``: ONNX export, run with onnxruntime's CUDA provider (``--cpu``: the
  CPU provider; FAIL when onnxruntime offers no CUDA provider), embeddings compared with
  the torch model's;
* ``generator-NAME-train`` / ``-resume`` / ``-sample`` for every registered generator:
  bf16 training (``--cpu``: fp32, since bf16 autocast on a CPU made each generator's four
  steps 35 s instead of 6) with the recognizer above as identity encoder, stopped at step 2
  and resumed, then sampling a few images from the exported generator.

A new generator is covered as soon as it is registered; if it needs its own config,
add one line to ``GENERATOR_CONFIGS``. On the GPU the recognizer is an iResNet-50 at
112 px (the real recipe's model); with ``--cpu`` a tiny iResNet at 32 px.

    bash bench/gpu/smoke.sh            # on a GPU machine
    bash bench/gpu/smoke.sh --cpu      # anywhere (the test suite runs this)
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
DEFAULT_GENERATOR_CONFIG = REPO / "configs" / "generators" / "id3_world.yaml"
# registry name -> config to start from (default: DEFAULT_GENERATOR_CONFIG)
GENERATOR_CONFIGS: dict[str, Path] = {
    "uiface": REPO / "configs" / "generators" / "uiface_world.yaml",
    "morphface": REPO / "configs" / "generators" / "morphface_world.yaml",
}

RESULTS: list[tuple[str, bool, float]] = []


def path(name: str):
    """Decorator that runs the function at once as path ``name`` and binds its result
    (None on failure); prints the path's line; one failure never stops the others."""

    def wrap(fn):
        t0 = time.perf_counter()
        try:
            out = fn()
            ok = True
        except Exception:
            traceback.print_exc(file=sys.stderr)
            out, ok = None, False
        seconds = time.perf_counter() - t0
        RESULTS.append((name, ok, seconds))
        print(f"{name} {'ok' if ok else 'FAIL'} {seconds:.1f}", flush=True)
        return out

    return wrap


def recognizer_config(data: Path, out: Path, gpu: bool):
    from synthface.pipeline.config import validate_config
    from synthface.recognition.config import TrainConfig

    model = (
        {"backbone": "ir50", "input_size": 112, "embedding_dim": 512, "channels_last": True}
        if gpu
        else {"backbone": "tiny", "input_size": 32, "embedding_dim": 64}
    )
    return validate_config(
        {
            "data": {"train": str(data), "batch_size": 16, "num_workers": 1 if gpu else 0},
            "model": model,
            "head": {"name": "arcface", "params": {"sample_rate": 0.5}},
            "train": {
                "output_dir": str(out),
                "max_steps": 4,
                "device": "cuda" if gpu else "cpu",
                "mixed_precision": "bf16",
            },
            "checkpoint": {"every_steps": 2, "keep": 2},
            "logging": {"every_steps": 2, "progress": False},
        },
        TrainConfig,
    )


def generator_config(name: str, data: Path, encoder: Path, dim: int, out: Path, gpu: bool):
    from synthface.generators.config import GeneratorConfig
    from synthface.pipeline.config import load_config

    cfg = load_config(GENERATOR_CONFIGS.get(name, DEFAULT_GENERATOR_CONFIG), GeneratorConfig)
    cfg.generator = name
    cfg.conditioning.identity_dim = dim
    cfg.encoder.path = str(encoder)
    cfg.data.path, cfg.data.source, cfg.data.shuffle_buffer = str(data), "shards", 64
    cfg.sampler.steps, cfg.sampler.batch_size = 4, 4
    t = cfg.train
    t.steps, t.batch_size, t.checkpoint_every, t.log_every = 4, 8, 2, 2
    t.mixed_precision, t.output_dir = "bf16" if gpu else "no", str(out)
    return cfg


def generator_paths(cfg, encoder, device: str, gpu: bool) -> None:
    """Train (bf16) to step 2, resume to 4, sample from the exported generator."""
    from synthface.generators.base import load_generator
    from synthface.generators.training import train_generator

    name = cfg.generator

    @path(f"generator-{name}-train")
    def _():
        assert train_generator(cfg, encoder=encoder, steps=2)["step"] == 2

    @path(f"generator-{name}-resume")
    def final():
        result = train_generator(cfg, encoder=encoder)
        assert result["step"] == 4 and len(result["history"]) == 2
        return result["final"]

    @path(f"generator-{name}-sample")
    def _():
        gen = load_generator(final, encoder=encoder, device=device)
        dim = cfg.conditioning.identity_dim
        ident = np.random.default_rng(0).standard_normal((2, dim)).astype(np.float32)
        images = gen.generate(ident, seeds=[1, 2], precision="bf16" if gpu else "fp32")
        assert images.shape == (2, cfg.image_size, cfg.image_size, 3)
        assert images.dtype == np.uint8 and images.std() > 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (CI)")
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    gpu = not args.cpu
    if gpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu", file=sys.stderr)
        return 2
    if args.cpu:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    import tempfile

    work = Path(args.out or tempfile.mkdtemp(prefix="synthface-smoke-"))
    device = "cuda" if gpu else "cpu"
    print(f"device {torch.cuda.get_device_name(0) if gpu else 'cpu'}; work {work}", flush=True)

    @path("world")
    def data():
        from synthface.pipeline.world import make_world_dataset

        size = 112 if gpu else 32
        make_world_dataset(work / "world", identities=16, per_identity=4, size=size, split="train")
        return work / "world"

    if data is None:
        return 1
    from synthface.recognition.training import train

    rec_cfg = recognizer_config(data, work / "recognizer", gpu)

    @path("recognizer-train")
    def _():
        result = train(rec_cfg, stop_after=2)
        assert result.global_step == 2 and not result.completed

    @path("recognizer-resume")
    def rec_model():
        result = train(rec_cfg, resume="latest")
        assert result.global_step == 4 and result.model_dir is not None
        return result.model_dir

    @path("recognizer-onnx")
    def _():
        # onnxruntime directly (no insightface wrapper, which the GPU image lacks)
        import onnxruntime

        from synthface.recognition import load_recognizer
        from synthface.recognition.export import export_onnx

        onnx_path = work / "recognizer.onnx"
        export_onnx(rec_model, onnx_path, allow_any_size=not gpu)
        want = "CUDAExecutionProvider" if gpu else "CPUExecutionProvider"
        have = onnxruntime.get_available_providers()
        assert want in have, f"onnxruntime offers {have}, not {want} (GPU: onnxruntime-gpu)"
        session = onnxruntime.InferenceSession(str(onnx_path), providers=[want])
        assert session.get_providers()[0] == want, session.get_providers()
        size = rec_cfg.model.input_size
        x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        model = load_recognizer(rec_model, device=device)
        with torch.inference_mode():
            ref = torch.nn.functional.normalize(model(x.to(device)).float(), dim=1).cpu()
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        cos = (ref * torch.nn.functional.normalize(got.float(), dim=1)).sum(1)
        assert float(cos.min()) > 0.99, f"ONNX and torch embeddings disagree ({cos.tolist()})"

    if rec_model is None:
        return 1
    from synthface.generators.base import GENERATORS
    from synthface.generators.encoder import load_identity_encoder

    encoder = load_identity_encoder(rec_model)
    dim = int(rec_cfg.model.embedding_dim)
    for name in GENERATORS.names():
        cfg = generator_config(name, data, rec_model, dim, work / f"gen_{name}", gpu)
        generator_paths(cfg, encoder, device, gpu)

    failed = [name for name, ok, _ in RESULTS if not ok]
    summary = f"{len(RESULTS) - len(failed)}/{len(RESULTS)} paths ok"
    print(summary + (f"; FAIL: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
