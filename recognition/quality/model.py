"""The SDD-FIQA quality regressor: a registered backbone's feature map -> one score.

As in SDD-FIQA's reference, the regressor is a recognition backbone (optionally
initialised from a trained recognizer: its features already separate good from bad
faces) with a small head on the last feature map, ``Flatten -> PReLU -> Dropout(0.5)
-> Linear(C*h*w -> 1)``, regressing the pseudo-labels' 0-100 scale.

A saved regressor is a directory like a recognizer's: ``model.safetensors`` and
``config.json`` (format ``synthface.quality``: backbone spec, head, input convention,
weights hash, training config), written weights first. :class:`QualityScorer` scores
aligned uint8 crops with it; generation QC uses that (``qc.quality_model``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from synthface.pipeline.atomic import atomic_path, atomic_write_json, file_sha256
from synthface.pipeline.errors import ConfigError, InputError
from synthface.recognition.checkpoint import INPUT_CONVENTION, load_weights

FORMAT = "synthface.quality"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class QualityRegressor(nn.Module):
    """Backbone feature map -> quality score (N,).

    Args:
        backbone: a backbone built by ``create_backbone`` with ``forward_features`` and
            ``feature_map`` (iResNets, MobileFaceNet).
        dropout: before the linear read-out (reference 0.5).
    """

    def __init__(self, backbone: nn.Module, dropout: float = 0.5) -> None:
        super().__init__()
        fmap = getattr(backbone, "feature_map", None)
        if fmap is None or not hasattr(backbone, "forward_features"):
            name = getattr(backbone, "spec", {}).get("name", type(backbone).__name__)
            raise ConfigError(f"quality model: backbone {name!r} exposes no feature map")
        self.backbone = backbone
        self.dropout = float(dropout)
        self.head = nn.Sequential(
            nn.Flatten(), nn.PReLU(), nn.Dropout(dropout), nn.Linear(int(np.prod(fmap)), 1)
        )
        self.input_size = tuple(backbone.input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x)).squeeze(1)


def build_quality_model(
    backbone: str,
    *,
    input_size: int | tuple[int, int],
    params: dict[str, Any] | None = None,
    dropout: float = 0.5,
    init: str | None = None,
) -> QualityRegressor:
    """A regressor on a registered backbone; ``init`` loads a recognizer's weights into it."""
    from synthface.recognition.backbones import create_backbone
    from synthface.recognition.checkpoint import load_recognizer

    if init is not None:
        net = load_recognizer(init).train()
        if net.spec.get("name") != backbone or tuple(net.input_size) != tuple(
            (input_size, input_size) if isinstance(input_size, int) else input_size
        ):
            raise ConfigError(
                f"model.init: {init} is a {net.spec.get('name')} at {list(net.input_size)}, "
                f"the config asks for {backbone} at {input_size}"
            )
    else:
        net = create_backbone(backbone, input_size=input_size, **(params or {}))
    return QualityRegressor(net, dropout)


def save_quality_model(model: QualityRegressor, out_dir: str | os.PathLike, config: dict) -> Path:
    """Weights, then ``config.json`` (whose presence marks a complete directory)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": model.backbone.spec,
        "head": {"dropout": model.dropout},
        "score": "SDD-FIQA pseudo-label scale: 0 (worst) .. 100 (best) of its training set",
        "input": INPUT_CONVENTION,
        "weights": {"file": WEIGHTS_NAME, "sha256": file_sha256(out / WEIGHTS_NAME)[0]},
        "config": config,
    }
    atomic_write_json(out / CONFIG_NAME, meta)
    return out


def load_quality_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild a saved :class:`QualityRegressor` (evaluation mode) and check its weights."""
    from synthface.recognition.backbones import create_backbone

    p = Path(path)
    cfg_path = p / CONFIG_NAME
    try:
        meta = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: not a quality model (no {CONFIG_NAME})") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{cfg_path}: unreadable ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{cfg_path}: format {meta.get('format')!r} is not {FORMAT!r} v1")
    weights = p / meta["weights"]["file"]
    if not weights.is_file() or file_sha256(weights)[0] != meta["weights"]["sha256"]:
        raise InputError(f"{weights}: missing or its sha256 differs from {cfg_path}")
    spec = dict(meta["backbone"])
    model = QualityRegressor(create_backbone(spec.pop("name"), **spec), meta["head"]["dropout"])
    load_weights(model, weights)
    return model.to(device).eval()


class QualityScorer:
    """Scores aligned RGB uint8 crops (N x H x W x 3) with a saved quality model.

    Images of another size are resized to the model's input, as in training.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = load_quality_model(path, self.device)
        self.input_size = self.model.input_size
        self.source = str(path)

    @torch.inference_mode()
    def score(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        from synthface.recognition.training.data import to_model_input

        arr = np.asarray(images)
        if arr.ndim != 4 or arr.shape[3] != 3 or arr.dtype != np.uint8:
            raise InputError(
                f"quality: images must be uint8 N x H x W x 3, got {arr.dtype} {arr.shape}"
            )
        out = []
        for lo in range(0, len(arr), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(arr[lo : lo + batch_size]))
            x = to_model_input(batch.to(self.device), self.input_size[0])
            out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)
