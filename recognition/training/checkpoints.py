"""Training checkpoints: ``accelerator.save_state`` directories published atomically.

A checkpoint is ``OUTPUT/checkpoints/step-NNNNNNNN/`` holding accelerate's state (model
weights as safetensors, optimizer, grad scaler, per-process RNG states) plus
``trainer_state.json`` with the step and the resolved config. It is written under a
hidden temporary name, fsynced and renamed only when complete, so a crash mid-save never
leaves a directory that ``--resume latest`` would pick up. Before resuming, every file it
will load is checked (``check_checkpoint``): a checkpoint damaged later (a truncated copy,
a full disk) is an error naming the file, never a silently different run. accelerate reads
the optimizer and RNG files with ``torch.load(weights_only=True)``; nothing here unpickles.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from synthface.pipeline.atomic import atomic_write_json, publish_dir
from synthface.pipeline.checkfiles import check_safetensors, check_zip, newest_intact
from synthface.pipeline.errors import InputError
from synthface.pipeline.limits import quote

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d{8})$")
_RNG_KEYS = {"random_state", "numpy_random_seed", "torch_manual_seed"}


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Published checkpoint directories (``step-NNNNNNNN``), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        m = _NAME.match(entry.name)
        if m and entry.is_dir():
            found.append((int(m.group(1)), entry))
    return sorted(found)


def read_state(path: str | Path) -> dict[str, Any]:
    file = Path(path) / STATE_FILE
    try:
        state = json.loads(file.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not a complete training checkpoint (no {STATE_FILE})") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{file}: unreadable trainer state ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        raise InputError(f"{file}: no integer global_step")
    return state


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """Every file ``load_checkpoint`` reads is present and complete; returns the trainer state.

    The RNG states are loaded (they are small) and must hold what accelerate restores:
    accelerate itself would only log an unreadable one and continue with other randomness.
    """
    from accelerate.utils import load

    path = Path(path)
    state = read_state(path)
    check_safetensors(path / "model.safetensors")
    check_zip(path / "optimizer.bin")
    if (path / "scaler.pt").exists():
        check_zip(path / "scaler.pt")
    processes = state.get("num_processes", 1)
    if not isinstance(processes, int) or processes < 1:
        raise InputError(f"{path / STATE_FILE}: num_processes must be a positive integer")
    for rank in range(processes):
        file = path / f"random_states_{rank}.pkl"
        check_zip(file)
        try:
            rng = load(file)
        except Exception as exc:  # weights_only refusals raise several types
            raise InputError(
                f"{file}: unreadable RNG state ({type(exc).__name__}: {quote(str(exc), 100)})"
            ) from None
        if not isinstance(rng, dict) or not set(rng) >= _RNG_KEYS:
            raise InputError(f"{file}: RNG state lacks {sorted(_RNG_KEYS)}")
    return state


def resolve_resume(
    output_dir: str | Path, resume: str | None, *, allow_partial: bool = False
) -> Path | None:
    """``None`` -> fresh run; ``"latest"`` -> newest checkpoint or fresh; else a path.

    A damaged or incomplete checkpoint is an error naming the file; with ``allow_partial``
    ``latest`` falls back to an older one instead (``checkfiles.newest_intact``).
    """
    if resume is None:
        return None
    if resume != "latest":
        path = Path(resume)
        check_checkpoint(path)
        return path
    found = newest_intact(list_checkpoints(output_dir), check_checkpoint, allow_partial)
    return found[0] if found else None


def save_checkpoint(accelerator, output_dir: str | Path, step: int, state: dict, keep: int) -> Path:
    """Save on every process (accelerate needs each one's RNG state), publish on the main one."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"  # one name for all ranks, unlike atomic_dir's
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, {**state, "global_step": step})
        publish_dir(tmp, final)
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restore model, optimizer, scaler and RNG states; return the trainer state."""
    state = check_checkpoint(path)
    try:
        accelerator.load_state(str(path))
    except RuntimeError as exc:
        # load_state_dict(strict=True) names the missing/unexpected keys; keep that text.
        first = str(exc).strip().splitlines()
        raise InputError(
            f"{path}: checkpoint does not fit this model: {' '.join(first)[:500]}"
        ) from None
    return state
