"""``synthface shards verify``: check every shard against the manifest, report every problem.

Verification never stops at the first problem: a user repairing a dataset wants the whole
list (which shards are truncated, which samples lack members, which counts disagree).
Each problem is one line that starts with the file it is about.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from synthface.pipeline.atomic import file_sha256
from synthface.pipeline.errors import SynthfaceError
from synthface.pipeline.shards.index_reader import split_member
from synthface.pipeline.shards.manifest import INFO, load_manifest
from synthface.pipeline.shards.sample import IMAGE_EXTS, KEY_RE, decode_image, npy_from_bytes
from synthface.pipeline.shards.writer import SHARDS_DIR

ALLOWED_EXTS = {"cls", "json", "npy", *IMAGE_EXTS}


class _Report:
    def __init__(self):
        self.problems: list[str] = []
        self.samples = 0
        self.shards = 0

    def add(self, where: Any, msg: str) -> None:
        self.problems.append(f"{where}: {msg}")


def _check_sample(
    rep: _Report, where: str, key: str, members: dict[str, bytes], classes: int, decode: bool
) -> int | None:
    """Problems of one sample; returns its identity when the key is well-formed."""
    m = KEY_RE.match(key)
    if not m:
        rep.add(where, f"sample key {key!r} is not IIIIIIII/NNNN (8-digit identity, 4-digit index)")
        return None
    identity = int(m.group(1))
    images = [e for e in IMAGE_EXTS if e in members]
    for ext in ("cls", "json"):
        if ext not in members:
            rep.add(where, f"sample {key}: missing .{ext} member")
    if not images:
        rep.add(where, f"sample {key}: missing image member (.jpg or .png)")
    elif len(images) > 1:
        rep.add(where, f"sample {key}: more than one image member ({', '.join(images)})")
    for ext in sorted(set(members) - ALLOWED_EXTS):
        rep.add(where, f"sample {key}: unexpected member .{ext}")
    if "cls" in members:
        try:
            label = int(members["cls"].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            rep.add(where, f"sample {key}: .cls is not an integer ({members['cls'][:20]!r})")
        else:
            if label != identity:
                rep.add(
                    where, f"sample {key}: .cls label {label} != identity {identity} of the key"
                )
            if not 0 <= label < classes:
                rep.add(where, f"sample {key}: label {label} out of range 0..{classes - 1}")
    if "json" in members:
        try:
            meta = json.loads(members["json"])
            if not isinstance(meta, dict):
                rep.add(where, f"sample {key}: .json is not an object")
            elif meta.get("identity", identity) != identity:
                rep.add(where, f"sample {key}: .json identity {meta.get('identity')} != {identity}")
        except ValueError as exc:
            rep.add(where, f"sample {key}: .json does not parse ({exc})")
    if "npy" in members:
        try:
            arr = npy_from_bytes(members["npy"], ".npy")
            if arr.ndim != 1:
                rep.add(where, f"sample {key}: .npy embedding is not 1-D (shape {arr.shape})")
        except SynthfaceError as exc:
            rep.add(where, f"sample {key}: .npy does not load ({exc})")
    if decode and len(images) == 1:
        try:
            decode_image(members[images[0]])
        except SynthfaceError as exc:
            rep.add(where, f"sample {key}: .{images[0]} {str(exc).split(': ', 1)[-1]}")
    return identity


def _scan_shard(rep: _Report, path: Path, classes: int, decode: bool) -> tuple[Counter, int] | None:
    """Per-identity sample counts found in the shard, and its sample count."""
    counts: Counter = Counter()
    seen: set[str] = set()
    order: list[int] = []
    n = 0
    key, members = None, {}

    def finish() -> None:
        nonlocal n
        if key is None:
            return
        if key in seen:
            rep.add(path, f"duplicate sample key {key} (members not adjacent or repeated)")
        seen.add(key)
        n += 1
        identity = _check_sample(rep, str(path), key, members, classes, decode)
        if identity is not None:
            counts[identity] += 1
            if not order or order[-1] != identity:
                order.append(identity)

    try:
        with tarfile.open(path, "r|") as tar:
            for info in tar:
                if not info.isfile():
                    rep.add(path, f"member {info.name!r} is not a regular file")
                    continue
                k, ext = split_member(info.name)
                if k != key:
                    finish()
                    key, members = k, {}
                if ext in members:
                    rep.add(path, f"sample {k}: duplicate .{ext} member")
                f = tar.extractfile(info)
                members[ext] = f.read() if f is not None else b""
        finish()
    except (OSError, tarfile.TarError, EOFError) as exc:
        # the sample being read when the tar broke off is incomplete by construction: not checked
        rep.add(path, f"truncated or corrupt tar after {n} complete samples ({exc})")
        return counts, n
    if len(order) != len(set(order)):
        rep.add(path, "samples of one identity are not grouped together")
    return counts, n


def _check_side_files(rep: _Report, root: Path, split: str, entry: dict) -> np.ndarray | None:
    counts = None
    classes = entry.get("num_identities", 0)
    for name, arr_entry in sorted(entry.get("arrays", {}).items()):
        path = root / arr_entry["file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            rep.add(path, f"identity array {name!r} unreadable ({exc.strerror or exc})")
            continue
        if hashlib.sha256(data).hexdigest() != arr_entry.get("sha256"):
            rep.add(path, "sha256 differs from the manifest")
        try:
            arr = npy_from_bytes(data, str(path))
        except SynthfaceError as exc:
            rep.add(path, f"does not load as .npy ({exc})")
            continue
        if arr.ndim == 0 or arr.shape[0] != classes:
            rep.add(path, f"first dimension {arr.shape[:1]} != num_identities {classes}")
        if name == "identity_counts":
            counts = arr
    if counts is None:
        rep.add(root / "dataset.json", f"split {split!r}: no identity_counts array listed")
    elif int(counts.sum()) != entry.get("num_samples"):
        rep.add(
            root / "dataset.json",
            f"split {split!r}: num_samples {entry.get('num_samples')} != sum of identity_counts {int(counts.sum())}",
        )
    shards = entry.get("shards", [])
    wids_path = root / entry.get("wids_index", f"{split}-wids.json")
    try:
        wids = json.loads(wids_path.read_text())
        got = [(s["url"], s["nsamples"], s.get("filesize")) for s in wids["shardlist"]]
        want = [(f"{SHARDS_DIR}/{s['name']}", s["num_samples"], s["bytes"]) for s in shards]
        if got != want:
            rep.add(wids_path, "shard list disagrees with the manifest")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        rep.add(wids_path, f"wids index unreadable or malformed ({exc})")
    try:
        info = json.loads((root / INFO).read_text())["splits"][split]
        if info["shard_lengths"] != [s["num_samples"] for s in shards]:
            rep.add(root / INFO, f"split {split!r}: shard_lengths disagree with the manifest")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        rep.add(root / INFO, f"split {split!r}: unreadable or malformed ({exc})")
    return counts


def _verify_split(rep: _Report, root: Path, split: str, entry: dict, decode: bool) -> None:
    classes = int(entry.get("num_identities", 0))
    shards = entry.get("shards", [])
    counts_arr = _check_side_files(rep, root, split, entry)
    if sum(s["num_samples"] for s in shards) != entry.get("num_samples"):
        rep.add(
            root / "dataset.json",
            f"split {split!r}: shard sample counts do not add up to num_samples",
        )
    listed = {s["name"] for s in shards}
    shards_dir = root / SHARDS_DIR
    for path in sorted(shards_dir.glob(f"{split}-*.tar")):
        if path.name not in listed:
            rep.add(path, "shard file not listed in the manifest")
    for path in sorted(shards_dir.glob(f".{split}-*.tmp-*")):
        rep.add(path, "leftover temporary file of an interrupted write")
    owner: dict[int, str] = {}
    expected_first = 0
    found = np.zeros(classes, dtype=np.int64)
    for s in shards:
        path = shards_dir / s["name"]
        rep.shards += 1
        if s["first_identity"] != expected_first:
            rep.add(
                root / "dataset.json",
                f"{s['name']}: first_identity {s['first_identity']} != expected {expected_first} (identities not contiguous)",
            )
        expected_first = s["last_identity"] + 1
        if not path.is_file():
            rep.add(path, "shard listed in the manifest is missing")
            continue
        digest, size = file_sha256(path)
        if size != s["bytes"]:
            rep.add(
                path, f"size {size} != {s['bytes']} bytes in the manifest (truncated or appended?)"
            )
        if digest != s["sha256"]:
            rep.add(path, "sha256 differs from the manifest (corrupted or rewritten)")
        scanned = _scan_shard(rep, path, classes, decode)
        if scanned is None:
            continue
        counts, n = scanned
        rep.samples += n
        if n != s["num_samples"]:
            rep.add(path, f"holds {n} samples, manifest says {s['num_samples']}")
        if len(counts) != s["num_identities"]:
            rep.add(path, f"holds {len(counts)} identities, manifest says {s['num_identities']}")
        for identity in sorted(counts):
            if not s["first_identity"] <= identity <= s["last_identity"]:
                rep.add(
                    path,
                    f"identity {identity} outside the shard's range {s['first_identity']}..{s['last_identity']}",
                )
            if identity in owner:
                rep.add(
                    path, f"identity {identity} is split across shards (also in {owner[identity]})"
                )
            owner.setdefault(identity, s["name"])
            if 0 <= identity < classes:
                found[identity] += counts[identity]
    if classes and len(owner) != classes and expected_first == classes:
        missing = sorted(set(range(classes)) - set(owner))
        if missing:
            rep.add(
                root / "dataset.json",
                f"split {split!r}: identities without samples: {missing[:10]}",
            )
    if expected_first != classes:
        rep.add(
            root / "dataset.json",
            f"split {split!r}: shards cover identities 0..{expected_first - 1}, num_identities is {classes}",
        )
    if counts_arr is not None and counts_arr.shape == found.shape:
        diff = np.flatnonzero(counts_arr != found)
        for identity in diff[:20].tolist():
            rep.add(
                root / "dataset.json",
                f"identity {identity}: {int(found[identity])} samples in the shards, identity_counts says {int(counts_arr[identity])}",
            )


def verify_dataset(
    dataset_dir: str | Path, *, split: str | None = None, decode: bool = True
) -> dict:
    """``{"ok", "problems": [...], "shards", "samples"}`` for one split or all of them."""
    root = Path(dataset_dir)
    rep = _Report()
    try:
        manifest = load_manifest(root)
    except SynthfaceError as exc:
        return {"ok": False, "problems": [str(exc)], "shards": 0, "samples": 0}
    splits = manifest["splits"]
    if split is not None and split not in splits:
        return {
            "ok": False,
            "problems": [f"{root / 'dataset.json'}: no split {split!r}"],
            "shards": 0,
            "samples": 0,
        }
    for name in [split] if split else sorted(splits):
        try:
            _verify_split(rep, root, name, splits[name], decode)
        except (KeyError, TypeError, ValueError) as exc:
            rep.add(
                root / "dataset.json",
                f"split {name!r}: malformed manifest entry ({type(exc).__name__}: {exc})",
            )
    return {
        "ok": not rep.problems,
        "problems": rep.problems,
        "shards": rep.shards,
        "samples": rep.samples,
    }
