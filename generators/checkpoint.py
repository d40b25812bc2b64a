"""safetensors checkpoints with their config, written atomically, loaded strictly.

A generator directory (``save_pretrained``) holds ``config.json`` (format tag + the full
:class:`GeneratorConfig`), ``model.safetensors`` (the sampling weights, i.e. the EMA),
optional ``attribute_prior.json`` and optional ``autoencoder/`` (diffusers format).
Loading compares every tensor name and shape before touching the model, so a checkpoint
from another architecture fails with one line naming the first differences instead of
the silent ``strict=False`` load that UIFace's released reference sampler does (nothing
here loads with ``strict=False``; torch files are read with ``weights_only=True``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from synthface.generators.config import GeneratorConfig
from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.checkfiles import check_safetensors, check_zip, newest_intact
from synthface.pipeline.config import validate_config
from synthface.pipeline.errors import ConfigError, InputError

FORMAT = "synthface-generator"
FORMAT_VERSION = 1


def stable_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its ``__metadata__`` keys in sorted order.

    safetensors keeps the metadata in a Rust ``HashMap``, so two saves of the same tensors
    and metadata list its keys in a different order (seen: a re-exported checkpoint whose
    bytes differed from the first export at the header's first key). Sorting them keeps
    the header's length, so the data offsets and the tensor bytes are unchanged.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    if not meta or len(meta) < 2:
        return data
    text = json.dumps(
        {"__metadata__": dict(sorted(meta.items())), **header},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    if len(text) > n:  # serde and json escape alike; guard against a future difference
        raise ValueError(f"safetensors header grew from {n} to {len(text)} bytes")
    return data[:8] + text.ljust(n) + data[8 + n :]


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    """safetensors file of CPU copies of ``tensors``, written atomically, the same bytes
    for the same tensors and metadata."""
    from safetensors.torch import save

    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, stable_safetensors(save(cpu, metadata)))


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
        found = data.get("format") if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise InputError(f"{file}: not a {FORMAT} config (format={found!r})")
    if data.get("version") != FORMAT_VERSION:
        raise InputError(
            f"{file}: format version {data.get('version')} is not supported "
            f"(this code reads {FORMAT_VERSION})"
        )
    return validate_config(data.get("config"), GeneratorConfig, str(file))


def generator_config_json(cfg: GeneratorConfig, provenance: dict | None = None) -> dict:
    """``config.json``; ``provenance`` (imported weights: which files, which layout) is kept
    beside the config, not in it: it says where the weights came from, not how to build them.
    """
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg.model_dump(mode="json")}
    if provenance is not None:
        doc["provenance"] = provenance
    return doc


def read_generator_provenance(path: str | Path) -> dict | None:
    """The ``provenance`` of a checkpoint's ``config.json`` (``None``: trained here)."""
    try:
        data = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    prov = data.get("provenance") if isinstance(data, dict) else None
    return prov if isinstance(prov, dict) else None


# Everything a resumed training run loads from a checkpoint directory, beside its weights
# file (``model.safetensors`` for generators, diffusers' name for autoencoders).
TRAINING_FILES = (
    "config.json",
    "training/raw.safetensors",
    "training/optimizer.pt",
    "training/state.json",
)
WEIGHTS = "model.safetensors"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def check_training_checkpoint(ckpt: Path, weights: str = WEIGHTS) -> dict:
    """Every file a resume loads is present and complete; returns ``training/state.json``."""
    for rel in (weights, *TRAINING_FILES):
        if not (ckpt / rel).is_file():
            raise InputError(f"{ckpt / rel}: missing (incomplete checkpoint directory)")
    file = ckpt / "training" / "state.json"
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{file}: unreadable training state ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise InputError(f"{file}: no integer 'step'")
    check_safetensors(ckpt / weights)
    check_safetensors(ckpt / "training" / "raw.safetensors")
    check_zip(ckpt / "training" / "optimizer.pt")
    return state


def find_resume_checkpoint(
    run_dir: Path, allow_partial: bool = False, weights: str = WEIGHTS
) -> tuple[Path, dict] | None:
    """The newest checkpoint under ``run_dir/checkpoints`` and its state, ``None`` if none
    (damaged ones: see :func:`synthface.pipeline.checkfiles.newest_intact`)."""
    root = run_dir / "checkpoints"
    found = [
        (int(m.group(1)), p)
        for p in (root.iterdir() if root.is_dir() else [])
        if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    ]
    return newest_intact(
        found, lambda ckpt: check_training_checkpoint(ckpt, weights), allow_partial
    )


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` ``checkpoints/step-*`` folders of a run."""
    import shutil

    for old in sorted((Path(run_dir) / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def refuse_old_checkpoints(run_dir: Path) -> None:
    """``--no-resume`` into a folder that holds another run's checkpoints would interleave
    the two (pruning keeps the highest steps, so the new run's own checkpoints went first):
    refuse rather than delete anything."""
    old = sorted((Path(run_dir) / "checkpoints").glob("step-*"))
    if old:
        raise ConfigError(
            f"{Path(run_dir) / 'checkpoints'}: holds {len(old)} checkpoint(s) of an earlier run "
            f"(newest {old[-1].name}); to start over, delete that folder or set another "
            "train.output_dir"
        )
