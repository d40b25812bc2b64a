"""The dataset manifest ``dataset.json`` and the side files derived from it.

``finalize_dataset`` gathers the per-shard sidecar records, checks that they form one
gap-free dataset, writes identity-level arrays, the wids index and timm's ``_info.json``,
and writes ``dataset.json`` **last** and atomically: a directory with a manifest is a
finished dataset; one without is a run in progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from synthface.pipeline import __version__
from synthface.pipeline.atomic import atomic_write_bytes
from synthface.pipeline.errors import InputError, ShardError
from synthface.pipeline.limits import quote
from synthface.pipeline.shards.writer import (
    RECORDS_DIR,
    SHARDS_DIR,
    SPLIT_RE,
    ShardRecord,
    check_split,
    completed_shards,
)

FORMAT_NAME = "synthface-identity-shards"
SCHEMA_VERSION = 1
MANIFEST = "dataset.json"
INFO = "_info.json"
CLAIM_LOCK = ".claim.lock"
ARRAY_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Names that may sit in a dataset directory besides the split-prefixed ones.
OWN_NAMES = {MANIFEST, INFO, SHARDS_DIR, RECORDS_DIR}


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _config_dict(config: Any) -> dict:
    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    if not isinstance(data, dict):
        raise InputError(f"dataset config must be a mapping (got {type(data).__name__})")
    return json.loads(json.dumps(data, sort_keys=True))


def config_hash(config: Any) -> str:
    text = json.dumps(_config_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def array_file(split: str, name: str) -> str:
    """``identities.npy`` for the train split, ``{split}-identities.npy`` for the others."""
    return f"{name}.npy" if split == "train" else f"{split}-{name}.npy"


def wids_file(split: str) -> str:
    return f"{split}-wids.json"


def _pending_path(dataset_dir: Path, split: str) -> Path:
    return dataset_dir / RECORDS_DIR / f"{split}-config.json"


def _is_own(name: str) -> bool:
    return name in OWN_NAMES or name.endswith((".npy", "-wids.json"))


def _written_files(dataset_dir: Path, split: str) -> list[Path]:
    """Files a run of ``split`` writes per shard (``shards/``, ``records/``, ``qc/`` ...),
    finished or temporary: what makes a directory hold *part of* a dataset."""
    pattern = re.compile(rf"^\.?{re.escape(split)}-\d{{6}}\.")
    found = []
    with contextlib.suppress(OSError):
        for sub in dataset_dir.iterdir():
            if sub.is_dir():
                found.extend(p for p in sub.iterdir() if pattern.match(p.name))
    return sorted(found)


def _owner_path(dataset_dir: Path, split: str) -> Path:
    # Hidden, and removed when the split is finalized or released: the finished dataset's
    # bytes never depend on which process claimed it.
    return dataset_dir / RECORDS_DIR / f".{split}-owner.json"


def _live_owner(dataset_dir: Path, split: str) -> int | None:
    """The pid of another process on this host that holds the claim and still runs."""
    try:
        owner = json.loads(_owner_path(dataset_dir, split).read_text())
        pid, host = int(owner["pid"]), owner["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname() or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return pid


def _pending_hash(pending: Path) -> str | None:
    try:
        return json.loads(pending.read_text())["config_hash"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return "?"


def _check_claim(dataset_dir: Path, split: str, digest: str) -> None:
    """Refuse (``ShardError``) a directory that holds another dataset or unrelated files.

    An unfinished claim of another config whose run wrote nothing of the split (it failed
    before its first shard, or was refused and is rerun with other flags) may be taken over.
    """
    manifest_file = dataset_dir / MANIFEST
    if manifest_file.exists():
        old = load_manifest(dataset_dir).get("splits", {}).get(split)
        if old is not None and old.get("config_hash") != digest:
            raise ShardError(
                f"{dataset_dir}: already holds a different '{split}' dataset (config hash "
                f"{str(old.get('config_hash', '?'))[:12]} != {digest[:12]}); "
                "use a new directory or delete it"
            )
        return
    old_hash = _pending_hash(_pending_path(dataset_dir, split))
    if old_hash is not None:
        if old_hash == digest:
            return
        live = _live_owner(dataset_dir, split)
        if live is not None:
            raise ShardError(
                f"{dataset_dir}: claimed for another '{split}' dataset by a running process "
                f"(pid {live}); wait for it or stop it, or use a new directory"
            )
        written = _written_files(dataset_dir, split)
        if written:
            raise ShardError(
                f"{dataset_dir}: holds part of an unfinished '{split}' dataset of another "
                f"config (hash {old_hash[:12]} != {digest[:12]}; {len(written)} files such as "
                f"{written[0].relative_to(dataset_dir)}); use a new directory or delete it"
            )
        return
    if dataset_dir.is_dir():
        foreign = sorted(p.name for p in dataset_dir.iterdir() if not _is_own(p.name))
        if foreign:
            raise ShardError(
                f"{dataset_dir}: not empty and holds no synthface dataset (found "
                f"{quote(foreign[0])}); choose an empty or new directory"
            )


@contextlib.contextmanager
def _claim_lock(dataset_dir: Path) -> Iterator[None]:
    """Exclusive lock on ``records/.claim.lock``: check-and-claim is one step for every
    process sharing the directory (released by the kernel if the holder dies). A lock file
    unlinked by ``release_dataset`` while we waited is not trusted: we lock the new one."""
    import fcntl

    records = dataset_dir / RECORDS_DIR
    path = records / CLAIM_LOCK
    while True:
        records.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


def begin_dataset(dataset_dir: str | Path, *, config: Any, split: str = "train") -> str:
    """Claim ``dataset_dir`` for ``config`` before writing shards; returns the config hash.

    Refuses (``ShardError``) a directory that holds a different dataset for this split
    (other config hash) — finished, or unfinished with shards already written — or that
    holds files which are not a synthface dataset, so that a typo in an output path never
    mixes two datasets or clobbers unrelated files. The refusal comes before anything is
    written; the claim itself is made under an exclusive lock.
    """
    dataset_dir = Path(dataset_dir)
    check_split(split)
    digest = config_hash(config)
    if dataset_dir.exists() and not dataset_dir.is_dir():
        raise ShardError(f"{dataset_dir}: output path exists and is not a directory")
    _check_claim(dataset_dir, split, digest)  # refuse before creating anything
    with _claim_lock(dataset_dir):
        _check_claim(dataset_dir, split, digest)  # another process may have claimed since
        pending = _pending_path(dataset_dir, split)
        if _pending_hash(pending) != digest:
            payload = {"config": _config_dict(config), "config_hash": digest}
            atomic_write_bytes(pending, _json_bytes(payload))
        owner = {"pid": os.getpid(), "host": socket.gethostname()}
        atomic_write_bytes(_owner_path(dataset_dir, split), _json_bytes(owner), sync=False)
    return digest


def release_dataset(dataset_dir: str | Path, *, config: Any, split: str = "train") -> bool:
    """Give up an unfinished claim of ``config`` if its run wrote nothing of the split.

    Called when a run fails before its first shard, so that the same directory can be
    reused with another config. Returns whether the claim was released.
    """
    dataset_dir = Path(dataset_dir)
    pending = _pending_path(dataset_dir, split)
    if not pending.exists():
        return False
    records = dataset_dir / RECORDS_DIR
    with _claim_lock(dataset_dir):
        if _pending_hash(pending) != config_hash(config) or _written_files(dataset_dir, split):
            return False
        pending.unlink(missing_ok=True)
        _owner_path(dataset_dir, split).unlink(missing_ok=True)
        if [p.name for p in records.iterdir()] == [CLAIM_LOCK]:
            (records / CLAIM_LOCK).unlink()  # waiters notice and lock a fresh file
    for sub in (RECORDS_DIR, SHARDS_DIR):
        with contextlib.suppress(OSError):
            (dataset_dir / sub).rmdir()  # only if empty
    return True


def _npy_bytes(name: str, arr: np.ndarray) -> bytes:
    arr = np.asarray(arr)
    if arr.dtype == object:
        raise InputError(
            f"identity array {name!r}: object arrays are not allowed (need a numeric or str dtype)"
        )
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _check_records(
    dataset_dir: Path, split: str, records: dict[int, ShardRecord]
) -> list[ShardRecord]:
    if not records:
        raise ShardError(f"{dataset_dir}: no complete '{split}' shards to finalize")
    missing = sorted(set(range(max(records) + 1)) - set(records))
    if missing:
        listed = ", ".join(str(i) for i in missing[:10])
        raise ShardError(
            f"{dataset_dir}: '{split}' shard indices have gaps (missing or incomplete: {listed}); "
            "write them before finalizing"
        )
    ordered = [records[i] for i in range(len(records))]
    expected = 0
    for r in ordered:
        if r.first_identity != expected:
            raise ShardError(
                f"{dataset_dir}: identities not contiguous: {r.name} starts at identity "
                f"{r.first_identity}, expected {expected}"
            )
        expected = r.last_identity + 1
    listed_names = {r.name for r in ordered}
    shards_dir = dataset_dir / SHARDS_DIR
    strays = sorted(p.name for p in shards_dir.glob(f"{split}-*.tar") if p.name not in listed_names)
    if strays:
        raise ShardError(
            f"{shards_dir / strays[0]}: shard without a complete record (interrupted write?); "
            "rewrite or delete it before finalizing"
        )
    return ordered


def finalize_dataset(
    dataset_dir: str | Path,
    *,
    config: Any,
    num_classes: int | None = None,
    identity_arrays: dict[str, np.ndarray] | None = None,
    split: str = "train",
    extra: dict | None = None,
) -> dict:
    """Publish the dataset: arrays, wids index, ``_info.json``, then ``dataset.json``."""
    dataset_dir = Path(dataset_dir)
    check_split(split)
    digest = begin_dataset(dataset_dir, config=config, split=split)
    ordered = _check_records(
        dataset_dir, split, completed_shards(dataset_dir, split=split, check_sha=False)
    )
    classes = ordered[-1].last_identity + 1
    if num_classes is not None and num_classes != classes:
        raise ShardError(
            f"{dataset_dir}: num_classes={num_classes} but the shards hold {classes} identities"
        )
    counts = np.array([c for r in ordered for c in r.identity_counts], dtype=np.int64)
    if len(counts) != classes:
        raise ShardError(
            f"{dataset_dir}: shard records hold {len(counts)} identity counts for {classes} identities"
        )

    arrays = {"identity_counts": counts}
    for name, arr in (identity_arrays or {}).items():
        if not ARRAY_NAME_RE.match(name) or name == "identity_counts":
            raise InputError(
                f"identity array name {name!r} must match {ARRAY_NAME_RE.pattern} (not identity_counts)"
            )
        arr = np.asarray(arr)
        if arr.ndim == 0 or arr.shape[0] != classes:
            raise InputError(
                f"identity array {name!r}: first dimension must be {classes} (got shape {arr.shape})"
            )
        arrays[name] = arr
    array_entries = {}
    for name in sorted(arrays):
        data = _npy_bytes(name, arrays[name])
        fname = array_file(split, name)
        atomic_write_bytes(dataset_dir / fname, data)
        array_entries[name] = {
            "file": fname,
            "dtype": str(arrays[name].dtype),
            "shape": list(arrays[name].shape),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    shard_entries = []
    for r in ordered:
        d = r.to_dict()
        d.pop("identity_counts")
        shard_entries.append(d)
    wids = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": split,
        "shardlist": [
            {"url": f"{SHARDS_DIR}/{r.name}", "nsamples": r.num_samples, "filesize": r.bytes}
            for r in ordered
        ],
    }
    atomic_write_bytes(dataset_dir / wids_file(split), _json_bytes(wids))

    old = _load_json(dataset_dir / MANIFEST) if (dataset_dir / MANIFEST).exists() else None
    splits = dict(old.get("splits", {})) if isinstance(old, dict) else {}
    splits[split] = {
        "config": _config_dict(config),
        "config_hash": digest,
        "num_samples": int(counts.sum()),
        "num_identities": classes,
        "num_shards": len(ordered),
        "bytes": sum(r.bytes for r in ordered),
        "members": sorted({m for r in ordered for m in r.members}),
        "shards": shard_entries,
        "arrays": array_entries,
        "wids_index": wids_file(split),
        "extra": extra or {},
    }
    info = {
        "name": dataset_dir.name,
        "splits": {
            name: {
                "name": name,
                "num_samples": s["num_samples"],
                "filenames": [f"{SHARDS_DIR}/{e['name']}" for e in s["shards"]],
                "shard_lengths": [e["num_samples"] for e in s["shards"]],
            }
            for name, s in sorted(splits.items())
        },
    }
    atomic_write_bytes(dataset_dir / INFO, _json_bytes(info))
    manifest = {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "code_version": __version__,
        "splits": splits,
    }
    atomic_write_bytes(dataset_dir / MANIFEST, _json_bytes(manifest))
    _owner_path(dataset_dir, split).unlink(missing_ok=True)
    return manifest


def foreign_hint(folder: Path) -> str:
    """What to run when a folder without a manifest holds plain WebDataset tars."""
    with contextlib.suppress(OSError):
        if any(folder.glob("*.tar")):
            return (
                f"; its .tar files look like a plain WebDataset: convert them with "
                f"`synthface shards from-wds {folder} OUT`"
            )
    return ""


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(
            f"{path}: no manifest (not a finished synthface dataset){foreign_hint(path.parent)}"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ShardError(f"{path}: unreadable manifest ({exc})") from None


def load_manifest(dataset_dir: str | Path) -> dict:
    """The parsed ``dataset.json``; ``ShardError`` if missing, invalid or of a newer schema."""
    path = Path(dataset_dir) / MANIFEST
    data = _load_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ShardError(f"{path}: not a synthface dataset manifest (format != {FORMAT_NAME!r})")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise ShardError(
            f"{path}: schema_version {version!r} is not supported (this code reads 1..{SCHEMA_VERSION})"
        )
    if not isinstance(data.get("splits"), dict) or not data["splits"]:
        raise ShardError(f"{path}: manifest lists no splits")
    for split, entry in data["splits"].items():
        _check_names(path, split, entry)
    return data


def _plain_name(manifest: Path, field: str, value: Any) -> None:
    """A file name inside the dataset directory: no path, no '..', nothing absolute."""
    ok = (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and not any(c in value for c in "/\\\0")
    )
    if not ok:
        raise ShardError(
            f"{manifest}: {field} is {quote(value)}, not a file name inside the dataset; "
            "refusing to open it"
        )


def _check_names(manifest: Path, split: Any, entry: Any) -> None:
    """Every name the readers join to the dataset directory, checked before any is opened."""
    if not isinstance(split, str) or not SPLIT_RE.match(split):
        raise ShardError(f"{manifest}: split name {quote(split)} must match {SPLIT_RE.pattern}")
    if not isinstance(entry, dict):
        raise ShardError(f"{manifest}: splits.{split} is not a mapping")
    shards = entry.get("shards", [])
    arrays = entry.get("arrays", {})
    if not isinstance(shards, list) or not isinstance(arrays, dict):
        raise ShardError(f"{manifest}: splits.{split}: 'shards' must be a list, 'arrays' a mapping")
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict):
            raise ShardError(f"{manifest}: splits.{split}.shards[{i}] is not a mapping")
        _plain_name(manifest, f"splits.{split}.shards[{i}].name", shard.get("name"))
    for name, arr in arrays.items():
        if not isinstance(arr, dict):
            raise ShardError(f"{manifest}: splits.{split}.arrays.{name} is not a mapping")
        _plain_name(manifest, f"splits.{split}.arrays.{name}.file", arr.get("file"))
    if "wids_index" in entry:
        _plain_name(manifest, f"splits.{split}.wids_index", entry["wids_index"])


def split_manifest(dataset_dir: str | Path, split: str = "train") -> dict:
    manifest = load_manifest(dataset_dir)
    if split not in manifest["splits"]:
        known = ", ".join(sorted(manifest["splits"]))
        raise ShardError(f"{Path(dataset_dir) / MANIFEST}: no split {split!r} (has: {known})")
    return manifest["splits"][split]


def shard_paths(dataset_dir: str | Path, split: str = "train") -> list[Path]:
    """Shard files of ``split`` in manifest order."""
    entry = split_manifest(dataset_dir, split)
    return [Path(dataset_dir) / SHARDS_DIR / s["name"] for s in entry["shards"]]


def load_identity_array(dataset_dir: str | Path, name: str, split: str = "train") -> np.ndarray:
    entry = split_manifest(dataset_dir, split)
    if name not in entry["arrays"]:
        raise ShardError(
            f"{dataset_dir}: no identity array {name!r} (has: {', '.join(sorted(entry['arrays']))})"
        )
    return np.load(Path(dataset_dir) / entry["arrays"][name]["file"], allow_pickle=False)
