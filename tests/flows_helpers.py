"""Tiny, untrained models and configs for the generation-flow tests (seconds on a CPU).

The weights are random: these tests check orchestration, resume, determinism and QC
plumbing — never image quality — so untrained models are the honest choice here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from synthface.pipeline.generate_plan import GenerateConfig

DIM = 32
SIZE = 16


def make_tiny_models(root: Path) -> tuple[Path, Path]:
    """Save a tiny recognizer and a tiny ID³ generator conditioned on it; return their dirs."""
    from synthface.generators.base import create_generator
    from synthface.generators.config import GeneratorConfig
    from synthface.recognition import create_backbone, save_recognizer

    torch.manual_seed(0)
    rec_dir = root / "recognizer"
    gen_dir = root / "generator"
    if not (rec_dir / "config.json").is_file():
        model = create_backbone("tiny", input_size=SIZE, embedding_dim=DIM, widths=(8, 8, 16, 16))
        save_recognizer(model.eval(), rec_dir, {"note": "untrained, for tests"})
    if not (gen_dir / "config.json").is_file():
        cfg = GeneratorConfig.model_validate(
            {
                "image_size": SIZE,
                "unet": {
                    "block_out_channels": [16, 16],
                    "norm_num_groups": 8,
                    "cross_attention_dim": 16,
                    "attention_head_dim": 4,
                },
                "conditioning": {"identity_dim": DIM, "identity_tokens": 2, "mlp_hidden": [32]},
                "sampler": {"name": "ddim", "steps": 2, "id_guidance_scale": 0.0},
                "id3": {"anchor_iterations": 5},
                "encoder": {"path": str(rec_dir)},
            }
        )
        create_generator("id3", cfg).save_pretrained(gen_dir)
    return gen_dir, rec_dir


def tiny_config(models: Path, out: Path, **sections) -> GenerateConfig:
    gen_dir, _ = make_tiny_models(models)
    data = {
        "name": "tiny",
        "generator": {"checkpoint": str(gen_dir), "batch_size": 16},
        "identities": {"count": 6, "samples_per_identity": 3, "seed": 1},
        "output": {"dir": str(out), "max_samples_per_shard": 6},
        "report": {"contact_identities": 3, "contact_samples": 3},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return GenerateConfig.model_validate(data)
