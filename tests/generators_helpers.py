"""Tiny generator configs, encoders and data shared by the generator tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from synthface.generators.config import GeneratorConfig
from synthface.generators.encoder import IdentityEncoder

ID_DIM = 8


def tiny_config(tmp_path: Path | None = None, **overrides) -> GeneratorConfig:
    data = {
        "generator": "id3",
        "image_size": 16,
        "unet": {
            "block_out_channels": [8, 16],
            "norm_num_groups": 4,
            "cross_attention_dim": 16,
            "attention_head_dim": 4,
        },
        "conditioning": {
            "identity_dim": ID_DIM,
            "identity_tokens": 2,
            "mlp_hidden": [16],
            "attributes": [{"name": "yaw", "scale": 90.0}],
            "p_uncond": 0.2,
        },
        "sampler": {"name": "dpmpp_2m", "steps": 4, "batch_size": 4, "guidance_scale": 2.0},
        "data": {"hflip": False},
        "train": {
            "steps": 4,
            "batch_size": 4,
            "lr": 2e-3,
            "checkpoint_every": 2,
            "log_every": 1,
            "ema_decay": 0.9,
            "output_dir": str((tmp_path or Path("unused")) / "run"),
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return GeneratorConfig.model_validate(data)


class TinyRecognizer(nn.Module):
    def __init__(self, dim: int = ID_DIM) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_encoder(seed: int = 0) -> IdentityEncoder:
    torch.manual_seed(seed)
    return IdentityEncoder(TinyRecognizer(), input_size=16)


def toy_samples(identities: int = 4, per_identity: int = 4, size: int = 16) -> list[dict]:
    """Each identity is a colour blob at its own position; yaw shifts it sideways."""
    out = []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(identities):
        rng = np.random.default_rng(i)
        colour = rng.uniform(40, 215, 3)
        cy, cx = rng.uniform(4, size - 4, 2)
        for j in range(per_identity):
            yaw = float(np.random.default_rng([i, j]).uniform(-30, 30))
            d = ((yy - cy) ** 2 + (xx - cx - yaw / 15) ** 2) / 12.0
            img = 30 + colour[None, None, :] * np.exp(-d)[..., None]
            out.append(
                {
                    "__key__": f"{i:08d}/{j:04d}",
                    "image": np.clip(img, 0, 255).astype(np.uint8),
                    "label": i,
                    "meta": {"attributes": {"yaw": yaw}},
                    "embedding": None,
                }
            )
    return out


def toy_shards(path: Path, identities: int = 8, per_identity: int = 4, per_shard: int = 8) -> Path:
    """``toy_samples`` written as a finished shard dataset (PNG: lossless), ``per_shard`` each."""
    from synthface.pipeline.shards import DatasetWriter, Sample, encode_image

    with DatasetWriter(path, config={"toy": identities}, max_samples=per_shard) as w:
        for s in toy_samples(identities, per_identity):
            ident, index = (int(v) for v in s["__key__"].split("/"))
            w.add(Sample(ident, index, encode_image(s["image"], "png"), "png", s["meta"]))
        w.close()
    return path
