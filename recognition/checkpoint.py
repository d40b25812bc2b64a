"""Recognizer checkpoints: ``model.safetensors`` + ``config.json`` in one directory.

``config.json`` holds the backbone spec (registry name + constructor arguments, from
``create_backbone``), the input convention, the caller's free-form ``config`` (e.g. the
training config) and the SHA-256 of the weights file. It is written last, so a directory
whose ``config.json`` is missing or whose hash disagrees was not completely written.

Weights are never unpickled: safetensors, or ``torch.load(weights_only=True)`` for
``.pt``/``.pth`` state dicts (e.g. an arcface_torch ``backbone.pth``, whose key names
our iResNets share). Loading is always strict; a mismatch names the missing, unexpected
and wrongly shaped keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synthface.pipeline.atomic import atomic_path, atomic_write_text, file_sha256
from synthface.pipeline.errors import InputError

FORMAT = "synthface.recognizer"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
INPUT_CONVENTION = {
    "layout": "NCHW",
    "color": "RGB",
    "scale": "(x / 255 - 0.5) / 0.5",
    "mean": 127.5,
    "std": 127.5,
}
_SHOWN = 8


def _sha256(path: Path) -> str:
    return file_sha256(path)[0]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain backbone inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``)
    wrappers, whose state-dict keys would otherwise carry the wrapper's prefix."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save_recognizer(
    model: nn.Module, out_dir: str | os.PathLike, config: Mapping | None = None
) -> Path:
    """Save a backbone built by ``create_backbone`` to ``out_dir`` (created if needed).

    Args:
        model: the backbone; DDP and ``torch.compile`` wrappers are unwrapped.
        out_dir: checkpoint directory.
        config: JSON-able run information stored verbatim under ``"config"``.

    Returns:
        ``out_dir`` as a Path.
    """
    from safetensors.torch import save_file

    model = unwrap(model)
    spec = getattr(model, "spec", None)
    if not spec or "name" not in spec:
        raise InputError(
            f"cannot save {type(model).__name__}: not built by create_backbone (no .spec)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = out / WEIGHTS_NAME
    with atomic_path(weights) as tmp:
        save_file(state, tmp, metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": spec,
        "input": INPUT_CONVENTION,
        "weights": {"file": WEIGHTS_NAME, "sha256": _sha256(weights)},
        "config": dict(config) if config is not None else {},
    }
    text = json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_text(out / CONFIG_NAME, text)
    return out


def read_recognizer_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory (InputError if absent/invalid)."""
    cfg_path = Path(path) / CONFIG_NAME
    if not cfg_path.is_file():
        raise InputError(f"{path}: not a recognizer checkpoint (no {CONFIG_NAME})")
    try:
        meta = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{cfg_path}: unreadable: {exc}") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{cfg_path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{cfg_path}: format_version {meta.get('format_version')!r} is not {FORMAT_VERSION}"
        )
    if not isinstance(meta.get("backbone"), dict) or "name" not in meta["backbone"]:
        raise InputError(f"{cfg_path}: field 'backbone' must be a mapping with a 'name'")
    return meta


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from ``.safetensors`` or a ``.pt``/``.pth`` state dict (weights_only load).

    A ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper and a uniform ``module.``
    prefix (DDP) are unwrapped.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such weights file")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(p), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{p}: unreadable safetensors file: {exc}") from None
    elif p.suffix in (".pt", ".pth", ".bin"):
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refusals raise several types
            raise InputError(
                f"{p}: not a plain tensor state dict ({type(exc).__name__}: {exc})"
            ) from None
        for key in ("state_dict", "model", "backbone"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    else:
        raise InputError(f"{p}: unsupported weights suffix {p.suffix!r} (.safetensors, .pt, .pth)")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{p}: does not hold a mapping of names to tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def load_weights(
    model: nn.Module,
    state: Mapping[str, torch.Tensor] | str | os.PathLike,
    *,
    source: str | None = None,
) -> nn.Module:
    """Strictly copy ``state`` (a mapping or a weights file) into ``model``.

    Raises:
        InputError: naming the missing, unexpected and shape-mismatched keys, when the
            checkpoint belongs to another architecture or configuration.
    """
    if not isinstance(state, Mapping):
        source = source or str(state)
        state = read_state_dict(state)
    source = source or "state dict"
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        arch = getattr(model, "spec", {}).get("name", type(model).__name__)
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch (checkpoint vs model): {_listing(shapes)}")
        raise InputError(f"{source}: does not fit backbone {arch!r}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def load_recognizer(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the backbone saved by :func:`save_recognizer` and load its weights (eval mode).

    ``path`` is the checkpoint directory (or its ``config.json`` / ``model.safetensors``).
    """
    from synthface.recognition.backbones import create_backbone

    p = Path(path)
    if p.is_file() and p.name in (CONFIG_NAME, WEIGHTS_NAME):
        p = p.parent
    if not p.is_dir():
        raise InputError(f"{path}: no such checkpoint directory")
    meta = read_recognizer_config(p)
    weights = p / meta.get("weights", {}).get("file", WEIGHTS_NAME)
    if not weights.is_file():
        raise InputError(f"{weights}: weights file missing")
    expected = meta.get("weights", {}).get("sha256")
    if expected and _sha256(weights) != expected:
        raise InputError(
            f"{weights}: sha256 differs from {p / CONFIG_NAME} (incomplete or altered)"
        )
    spec = dict(meta["backbone"])
    if "protection" in spec:  # a protected recognizer (synthface.recognition.privacy)
        from synthface.recognition.privacy import rebuild_protected

        model = rebuild_protected(spec)
    else:
        name = spec.pop("name")
        model = create_backbone(name, **spec)
    load_weights(model, weights)
    return model.to(device).eval()
