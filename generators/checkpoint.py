"""safetensors checkpoints with their config, written atomically, loaded strictly.

A generator directory (``save_pretrained``) holds ``config.json`` (format tag + the full
:class:`GeneratorConfig`), ``model.safetensors`` (the sampling weights, i.e. the EMA),
optional ``attribute_prior.json`` and optional ``autoencoder/`` (diffusers format).
Loading compares every tensor name and shape before touching the model, so a checkpoint
from another architecture fails with one line naming the first differences instead of
the silent ``strict=False`` load that UIFace's sampler does.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from torch import nn

from synthface.generators.config import GeneratorConfig
from synthface.pipeline.config import validate_config
from synthface.pipeline.errors import InputError

FORMAT = "synthface-generator"
FORMAT_VERSION = 1


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError(f"{path}: missing weights file")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None


def state_mismatches(
    expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor], prefix: str = ""
) -> list[str]:
    """Counts and first names of misshaped, missing and unexpected tensors (empty = match).

    Names are reported as the file spells them (``prefix`` + name).
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{prefix}{k} {tuple(state[k].shape)} vs {tuple(shape)}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != tuple(shape)
    ]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (first: {shapes[0]})")
    if missing:
        parts.append(f"{len(missing)} missing tensors (first: {prefix}{missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (first: {prefix}{unexpected[0]})")
    return parts


def check_state_compatible(model: nn.Module, state: dict[str, torch.Tensor], source) -> None:
    """Raise :class:`InputError` naming the first mismatches between ``state`` and ``model``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    parts = state_mismatches(expected, state)
    if parts:
        raise InputError(
            f"{source}: checkpoint does not match the model architecture: " + "; ".join(parts)
        )


def load_weights(model: nn.Module, path: Path) -> None:
    state = load_tensors(path)
    check_state_compatible(model, state, path)
    model.load_state_dict(state, strict=True)


def read_generator_config(path: str | Path) -> GeneratorConfig:
    path = Path(path)
    file = path / "config.json"
    if not file.is_file():
        raise InputError(f"{path}: not a generator checkpoint (no config.json)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{file}: unreadable ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{file}: not a {FORMAT} config (format={data.get('format')!r})")
    if data.get("version") != FORMAT_VERSION:
        raise InputError(
            f"{file}: format version {data.get('version')} is not supported "
            f"(this code reads {FORMAT_VERSION})"
        )
    return validate_config(data.get("config"), GeneratorConfig, str(file))


def generator_config_json(cfg: GeneratorConfig) -> dict:
    return {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg.model_dump(mode="json")}


def replace_dir_atomic(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place; an old one is removed only afterwards."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def new_tmp_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex}")
    tmp.mkdir()
    return tmp
