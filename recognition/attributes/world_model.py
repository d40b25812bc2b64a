"""A small pose-and-age estimator trained on the procedural world's ground truth.

For users without insightface's attribute models: the world renders labelled faces whose
yaw, pitch, roll and capture age are known exactly, so a small CNN can learn them with
no real photograph. What it is good for on real faces is limited and unmeasured here
(the world's faces are procedural; docs/shards.md says so): on real aligned crops its
pose is a coarse cue at best and its age is not a real age estimate. Its held-out error
on the world's *eval* identities is measured at the end of training and stored with it.

A model is a directory: ``model.safetensors`` (weights, never pickled) and
``attributes.json`` (what the network is, what it outputs, how it was trained, its
held-out error), written last so an interrupted save leaves no loadable half.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import nn

from synthface.pipeline.atomic import atomic_dir, file_sha256
from synthface.pipeline.config import StrictModel, validate_config
from synthface.pipeline.errors import InputError

FORMAT = "synthface.world-attributes"
CONFIG_NAME = "attributes.json"
WEIGHTS_NAME = "model.safetensors"
# Outputs and their normalisation: the network predicts (value - offset) / scale.
TARGETS = {"yaw": (0.0, 30.0), "pitch": (0.0, 10.0), "roll": (0.0, 7.0), "age": (40.0, 15.0)}


class AttributeNetConfig(StrictModel):
    format: str = FORMAT
    input_size: int = Field(default=64, ge=32)
    channels: list[int] = Field(default=[16, 32, 64, 96], min_length=1)
    outputs: list[str] = Field(default_factory=lambda: list(TARGETS))
    offsets: list[float] = Field(default_factory=lambda: [v[0] for v in TARGETS.values()])
    scales: list[float] = Field(default_factory=lambda: [v[1] for v in TARGETS.values()])
    weights_sha256: str = ""
    training: dict = Field(default_factory=dict)
    eval: dict = Field(default_factory=dict)


class AttributeNet(nn.Module):
    """Stride-2 conv blocks, global average pool, one linear layer per output."""

    def __init__(self, cfg: AttributeNetConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for c in cfg.channels:
            layers += [
                nn.Conv2d(cin, c, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.SiLU(),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.SiLU(),
            ]
            cin = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, len(cfg.outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_input(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) crops -> (N, 3, size, size) in [-1, 1], antialiased resize."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x / 127.5 - 1.0


class WorldAttributeModel:
    """A trained estimator: aligned crops in, ``{name: (N,) values}`` out."""

    def __init__(self, cfg: AttributeNetConfig, net: AttributeNet, source: str = "<memory>"):
        self.cfg = cfg
        self.net = net.eval()
        self.source = source
        self._offset = np.array(cfg.offsets)
        self._scale = np.array(cfg.scales)

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """uint8 (H, W, 3) crops of any size (resized to the input side)."""
        size = self.cfg.input_size
        if len({im.shape for im in images}) == 1:
            x = to_input(np.stack(list(images)), size)
        else:
            x = torch.cat([to_input(im[None], size) for im in images])
        with torch.inference_mode():
            pred = self.net(x).double().numpy()
        values = pred * self._scale + self._offset
        return {name: values[:, i] for i, name in enumerate(self.cfg.outputs)}


def save_attribute_model(model: WorldAttributeModel, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_dir(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME))
        cfg = model.cfg.model_copy(update={"weights_sha256": file_sha256(tmp / WEIGHTS_NAME)[0]})
        text = json.dumps(cfg.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"
        (tmp / CONFIG_NAME).write_text(text)
    return path


def load_attribute_model(path: str | Path) -> WorldAttributeModel:
    """A directory written by :func:`save_attribute_model` (checked before use)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not cfg_file.is_file() or not weights.is_file():
        raise InputError(
            f"{path}: not an attribute model directory (needs {CONFIG_NAME} and {WEIGHTS_NAME}; "
            "train one with `synthface recognition train-attributes`)"
        )
    try:
        data = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{cfg_file}: unreadable ({exc})") from None
    cfg = validate_config(data, AttributeNetConfig, source=str(cfg_file))
    if cfg.format != FORMAT:
        raise InputError(f"{cfg_file}: format {cfg.format!r} is not {FORMAT!r}")
    if len(cfg.outputs) != len(cfg.offsets) or len(cfg.outputs) != len(cfg.scales):
        raise InputError(f"{cfg_file}: outputs, offsets and scales differ in length")
    if cfg.weights_sha256 and file_sha256(weights)[0] != cfg.weights_sha256:
        raise InputError(f"{weights}: sha256 differs from {CONFIG_NAME} (incomplete or altered)")
    net = AttributeNet(cfg)
    try:
        net.load_state_dict(load_file(str(weights)), strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{weights}: does not fit {CONFIG_NAME} ({first})") from None
    return WorldAttributeModel(cfg, net, str(path))


def render_world(
    identities: int, per_identity: int, size: int, seed: int, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """World faces (N, size, size, 3) uint8 and their targets (N, len(TARGETS)) float64."""
    from synthface.pipeline.world.dataset import check_counts, render_images

    check_counts(identities, per_identity)
    jobs = [(i, j, None) for i in range(identities) for j in range(per_identity)]
    images = np.empty((len(jobs), size, size, 3), dtype=np.uint8)
    targets = np.empty((len(jobs), len(TARGETS)), dtype=np.float64)
    for k, (_, _, image, meta) in enumerate(render_images(jobs, seed=seed, split=split, size=size)):
        images[k] = image
        targets[k] = [meta["attributes"][name] for name in TARGETS]
    return images, targets


def evaluate(model: WorldAttributeModel, images: np.ndarray, targets: np.ndarray) -> dict:
    """Mean absolute error per output (degrees, years) and of always guessing the mean."""
    pred = []
    for lo in range(0, len(images), 256):
        out = model(images[lo : lo + 256])
        pred.append(np.stack([out[name] for name in TARGETS], axis=1))
    err = np.abs(np.concatenate(pred) - targets)
    base = np.abs(targets - targets.mean(axis=0))
    return {
        "images": len(images),
        "mae": {name: round(float(err[:, i].mean()), 3) for i, name in enumerate(TARGETS)},
        "mae_of_mean_guess": {
            name: round(float(base[:, i].mean()), 3) for i, name in enumerate(TARGETS)
        },
    }


def train_attribute_model(
    out: str | Path,
    *,
    identities: int = 400,
    per_identity: int = 8,
    eval_identities: int = 64,
    steps: int = 800,
    batch_size: int = 64,
    lr: float = 2e-3,
    input_size: int = 64,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Train on ``identities x per_identity`` world train faces, measure on eval faces."""
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise InputError(
            f"steps, batch size and lr must be positive (got {steps}, {batch_size}, {lr})"
        )
    cfg = AttributeNetConfig(input_size=input_size)
    images, targets = render_world(identities, per_identity, input_size, seed, "train")
    x_all = to_input(images, input_size)
    y_all = torch.from_numpy((targets - np.array(cfg.offsets)) / np.array(cfg.scales)).float()
    torch.manual_seed(seed)
    net = AttributeNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    t0, losses = time.perf_counter(), []
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (min(batch_size, len(x_all)),), generator=gen)
        x, y = x_all[idx], y_all[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5  # a mirror negates yaw and roll
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        sign = torch.ones_like(y)
        sign[:, 0] = sign[:, 2] = torch.where(flip, -1.0, 1.0)
        loss = nn.functional.smooth_l1_loss(net(x), y * sign)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress(1)
    seconds = time.perf_counter() - t0
    cfg.training = {
        "world_split": "train",
        "identities": identities,
        "per_identity": per_identity,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        # mean loss over the first and the last tenth of the steps
        "first_loss": round(float(np.mean(losses[: max(1, steps // 10)])), 5),
        "last_loss": round(float(np.mean(losses[-max(1, steps // 10) :])), 5),
        "seconds": round(seconds, 1),
    }
    model = WorldAttributeModel(cfg, net)
    if eval_identities > 0:
        ev_images, ev_targets = render_world(
            eval_identities, per_identity, input_size, seed, "eval"
        )
        cfg.eval = {"world_split": "eval", **evaluate(model, ev_images, ev_targets)}
    save_attribute_model(model, out)
    return {"out": str(out), "training": cfg.training, "eval": cfg.eval}
