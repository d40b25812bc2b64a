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

import torch

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
        shard = _shard_file(path, rank)  # class centres of a sharded head
        if shard.exists():
            check_safetensors(shard)
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


def save_checkpoint(
    accelerator, output_dir: str | Path, step: int, state: dict, keep: int, head_shard=None
) -> Path:
    """Save on every process (accelerate needs each one's RNG state), publish on the main one.

    ``head_shard``: ``(head, optimizer)`` of a head whose class centres are sharded; each
    rank then also writes its centres and their optimizer state (accelerate saves the
    model and optimizer of the main process only).
    """
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"  # one name for all ranks, unlike atomic_dir's
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if head_shard is not None:
        save_head_shard(tmp, accelerator.process_index, *head_shard)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, {**state, "global_step": step})
        publish_dir(tmp, final)
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _shard_file(path: Path, rank: int) -> Path:
    return Path(path) / f"head_shard_{rank}.safetensors"


def save_head_shard(path: Path, rank: int, head, optimizer) -> None:
    """This rank's class centres and their optimizer state (momentum, Adam moments)."""
    from safetensors.torch import save_file

    from synthface.pipeline.atomic import atomic_path

    inner = getattr(optimizer, "optimizer", optimizer)
    tensors = {}
    for name, p in head.named_parameters():
        tensors[name] = p.detach().cpu().contiguous()
        for key, value in inner.state.get(p, {}).items():
            tensors[f"{name}.state.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    with atomic_path(_shard_file(path, rank)) as tmp:
        save_file(tensors, str(tmp))


def load_head_shard(path: Path, rank: int, head, optimizer) -> None:
    """Overwrite the main process's centres (which ``load_state`` put on every rank)."""
    from safetensors.torch import load_file

    file = _shard_file(path, rank)
    if not file.is_file():
        raise InputError(
            f"{path}: no {file.name}; a sharded head resumes only with the number of "
            "processes it was saved with"
        )
    tensors = load_file(str(file))
    inner = getattr(optimizer, "optimizer", optimizer)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name not in tensors or tensors[name].shape != p.shape:
                raise InputError(f"{file}: {name} missing or of another shape")
            p.copy_(tensors[name])
            prefix = f"{name}.state."
            state = {
                k[len(prefix) :]: v.to(p.device) for k, v in tensors.items() if k.startswith(prefix)
            }
            if state:
                if "step" in state:  # Adam keeps its step count on the CPU
                    state["step"] = state["step"].cpu()
                inner.state[p] = state


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
