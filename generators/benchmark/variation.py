"""Intra-class variation, measured: how much pose and age vary within each identity.

Synthetic identities are suspected of varying less than real ones; whether they do is a
measurement. Generated images carry no ground truth of what they show (only what was
*asked*), so a small CNN regressor is trained on world images whose ground-truth style
coefficients are known (yaw, pitch, roll, age at capture), and every training set —
real and synthetic alike — is measured by the same regressor. The within-identity
spread of an attribute is the root mean within-identity variance of its predictions
(ddof 1). The regressor's own error on held-out world images is reported next to it,
and for the real set the spread of the ground truth too, so the estimator's bias shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synthface.pipeline.atomic import atomic_path, atomic_write_json
from synthface.pipeline.errors import InputError


class AttributeRegressor(nn.Module):
    """Four conv blocks and a linear head: standardised attributes from an RGB crop."""

    def __init__(self, outputs: int, width: int = 32) -> None:
        super().__init__()
        layers, ch = [], 3
        for w in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(ch, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            layers += [nn.MaxPool2d(2)]
            ch = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(ch, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _tensor(images: np.ndarray, size: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[-1] != size or x.shape[-2] != size:
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x


def _load(path: str | Path, attributes: Sequence[str]):
    """Images, labels and ground-truth attribute rows (NaN where a sample has none)."""
    from synthface.pipeline.shards import iter_samples

    images, labels, rows = [], [], []
    for s in iter_samples(path):
        attrs = (s.get("meta") or {}).get("attributes") or {}
        images.append(s["image"])
        labels.append(int(s["label"]))
        rows.append([float(attrs.get(a, np.nan)) for a in attributes])
    if not images:
        raise InputError(f"{path}: no samples")
    return np.stack(images), np.array(labels), np.array(rows, dtype=np.float64)


def train_regressor(
    stage_dir: Path,
    train: str,
    held_out: str,
    *,
    attributes: Sequence[str],
    size: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
) -> dict:
    """Fit the regressor on ``train`` (world shards), report its error on ``held_out``."""
    from safetensors.torch import save_file

    images, _, y = _load(train, attributes)
    if np.isnan(y).any():
        raise InputError(f"{train}: samples without ground-truth {', '.join(attributes)}")
    mean, std = y.mean(0), y.std(0) + 1e-6
    target = torch.from_numpy(((y - mean) / std).astype(np.float32))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = AttributeRegressor(len(attributes))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g).numpy()
        loss = nn.functional.smooth_l1_loss(model(_tensor(images[idx], size)), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    with atomic_path(stage_dir / "regressor.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    info = {
        "attributes": list(attributes),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "size": size,
        "steps": steps,
        "final_loss": float(np.mean(losses[-20:])),
    }
    atomic_write_json(stage_dir / "regressor.json", info)
    ho_images, _, ho_y = _load(held_out, attributes)
    pred = predict((model, info), ho_images)
    mae = np.abs(pred - ho_y).mean(0)
    corr = [float(np.corrcoef(pred[:, k], ho_y[:, k])[0, 1]) for k in range(len(attributes))]
    return {
        **info,
        "path": str(stage_dir),
        "held_out_mae": dict(zip(attributes, map(float, mae))),
        "held_out_corr": dict(zip(attributes, corr)),
        "held_out_images": len(ho_images),
    }


def load_regressor(regressor_dir: str | Path) -> tuple[AttributeRegressor, dict]:
    import json

    from safetensors.torch import load_file

    d = Path(regressor_dir)
    info = json.loads((d / "regressor.json").read_text())
    model = AttributeRegressor(len(info["attributes"]))
    model.load_state_dict(load_file(d / "regressor.safetensors"))
    return model.eval(), info


@torch.no_grad()
def predict(regressor, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Attributes (raw units) of uint8 NHWC images; ``regressor`` from :func:`load_regressor`."""
    model, info = regressor
    out = np.concatenate(
        [
            model(_tensor(images[i : i + batch], info["size"])).numpy()
            for i in range(0, len(images), batch)
        ]
    )
    return out * np.array(info["std"]) + np.array(info["mean"])


def within_identity_spread(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """sqrt(mean over identities of the within-identity variance, ddof 1) per column."""
    values = np.asarray(values, dtype=np.float64)
    out = []
    for col in values.T:
        var = []
        for lab in np.unique(labels):
            v = col[labels == lab]
            v = v[np.isfinite(v)]
            if v.size >= 2:
                var.append(v.var(ddof=1))
        out.append(float(np.sqrt(np.mean(var))) if var else float("nan"))
    return np.array(out)


def measure_set(regressor_dir: str, dataset: str, *, max_identities: int, batch: int = 256) -> dict:
    """Within-identity spread of the set's predicted (and, when stored, recorded) attributes.

    ``recorded`` is what each image's metadata says: ground truth for world images, the
    *requested* condition for generated ones. Streams the set (one batch of images in
    memory) and stops after ``max_identities`` identities.
    """
    from synthface.pipeline.shards import iter_samples

    regressor = load_regressor(regressor_dir)
    attributes = regressor[1]["attributes"]
    preds, labels, recorded, buf = [], [], [], []
    for s in iter_samples(dataset):
        if s["label"] >= max_identities:
            break
        attrs = (s.get("meta") or {}).get("attributes") or {}
        buf.append(s["image"])
        labels.append(int(s["label"]))
        recorded.append([float(attrs.get(a, np.nan)) for a in attributes])
        if len(buf) == batch:
            preds.append(predict(regressor, np.stack(buf)))
            buf = []
    if buf:
        preds.append(predict(regressor, np.stack(buf)))
    if not preds:
        raise InputError(f"{dataset}: no samples")
    pred, labels, recorded = np.concatenate(preds), np.array(labels), np.array(recorded)
    out = {
        "identities": len(np.unique(labels)),
        "images": len(labels),
        "predicted": dict(zip(attributes, within_identity_spread(pred, labels).tolist())),
    }
    if np.isfinite(recorded).any():
        out["recorded"] = dict(zip(attributes, within_identity_spread(recorded, labels).tolist()))
    return out
