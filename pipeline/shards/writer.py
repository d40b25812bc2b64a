"""Write one shard: deterministic tar bytes, atomic publish, a sidecar record for resume.

Determinism: every member header has mtime 0, uid/gid 0, empty owner names, mode 0444
and USTAR format (``tarformat``: byte for byte what ``tarfile`` writes for such headers);
members come in a fixed order (``.cls``, image, ``.json``, ``.npy``); so the same samples
always give the same bytes and the same sha256.

Atomicity: the tar is written under a hidden temporary name, fsynced and renamed; only
then is its sidecar ``records/{split}-{index:06d}.json`` written (also atomically). A
shard counts as complete only when both exist and agree (size + sha256).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from synthface.pipeline.atomic import HashingFile, atomic_write, atomic_write_bytes, file_sha256
from synthface.pipeline.errors import InputError, ShardError
from synthface.pipeline.shards.sample import (
    IMAGE_EXTS,
    Sample,
    embedding_npy,
    image_format,
    meta_json,
)
from synthface.pipeline.shards.tarformat import end_padding, member_bytes

SPLIT_RE = re.compile(r"^[a-z][a-z0-9_]*$")
SHARDS_DIR = "shards"
RECORDS_DIR = "records"


def check_split(split: str) -> str:
    if not SPLIT_RE.match(split):
        raise InputError(f"split name {split!r} must match {SPLIT_RE.pattern}")
    return split


def shard_name(split: str, index: int) -> str:
    return f"{check_split(split)}-{index:06d}.tar"


def record_path(dataset_dir: str | Path, split: str, index: int) -> Path:
    return Path(dataset_dir) / RECORDS_DIR / f"{check_split(split)}-{index:06d}.json"


@dataclass(frozen=True)
class ShardRecord:
    """What the manifest lists about one shard (and what resume compares against)."""

    name: str
    index: int
    split: str
    num_samples: int
    num_identities: int
    first_identity: int
    last_identity: int
    bytes: int
    sha256: str
    identity_counts: tuple[int, ...] = field(default=(), repr=False)
    members: tuple[str, ...] = ()  # member extensions present in this shard, sorted

    def to_dict(self) -> dict:
        d = asdict(self)
        d["identity_counts"] = list(self.identity_counts)
        d["members"] = list(self.members)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ShardRecord:
        d = dict(d)
        d["identity_counts"] = tuple(d.get("identity_counts", ()))
        d["members"] = tuple(d.get("members", ()))
        return cls(**d)


class ShardWriter:
    """Incremental writer of one shard; use as a context manager or call close()/abort()."""

    def __init__(self, dataset_dir: str | Path, shard_index: int, *, split: str = "train"):
        if shard_index < 0 or shard_index > 999_999:
            raise InputError(f"shard index {shard_index} out of range 0..999999")
        self.dataset_dir = Path(dataset_dir)
        self.split = check_split(split)
        self.index = shard_index
        self.final = self.dataset_dir / SHARDS_DIR / shard_name(split, shard_index)
        self.record_file = record_path(dataset_dir, split, shard_index)
        self._counts: list[int] = []
        self._first: int | None = None
        self._keys: set[str] = set()
        self._members: set[str] = set()
        self._publish = contextlib.ExitStack()  # close() publishes, abort() discards
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.record_file.parent.mkdir(parents=True, exist_ok=True)
            # A stale sidecar must not vouch for the tar we are about to replace.
            self.record_file.unlink(missing_ok=True)
            self._file = self._publish.enter_context(atomic_write(self.final))
        except OSError as exc:
            raise ShardError(f"{self.final}: cannot write shard ({exc})") from None
        self._hashing = HashingFile(self._file)
        self._closed = False

    @property
    def num_samples(self) -> int:
        return sum(self._counts)

    @property
    def bytes_written(self) -> int:
        return self._hashing.size

    def _member(self, name: str, data: bytes) -> None:
        self._hashing.write(member_bytes(name, data))

    def add(self, sample: Sample) -> None:
        key = sample.key
        where = f"{self.final.name}: sample {key}"
        if sample.ext not in IMAGE_EXTS:
            raise InputError(
                f"{where}: image extension must be one of {IMAGE_EXTS} (got {sample.ext!r})"
            )
        if image_format(sample.image) != sample.ext:
            raise InputError(f"{where}: image bytes are not {sample.ext.upper()} data")
        if key in self._keys:
            raise InputError(f"{where}: duplicate key")
        last = None if self._first is None else self._first + len(self._counts) - 1
        if last is None:
            self._first = sample.identity
            self._counts.append(0)
        elif sample.identity == last + 1:
            self._counts.append(0)
        elif sample.identity != last:
            raise InputError(
                f"{where}: identities must arrive grouped and contiguous "
                f"(got identity {sample.identity} after {last})"
            )
        cls = str(sample.identity).encode("ascii")
        meta = meta_json(sample)
        npy = embedding_npy(sample)
        try:
            self._member(f"{key}.cls", cls)
            self._member(f"{key}.{sample.ext}", sample.image)
            self._member(f"{key}.json", meta)
            if npy is not None:
                self._member(f"{key}.npy", npy)
        except OSError as exc:
            self.abort()
            raise ShardError(f"{self.final}: cannot write shard ({exc})") from None
        self._keys.add(key)
        self._members.update(("cls", sample.ext, "json", *(("npy",) if npy is not None else ())))
        self._counts[-1] += 1

    def close(self) -> ShardRecord:
        if self._closed:
            raise ShardError(f"{self.final}: writer already closed")
        if not self._counts:
            self.abort()
            raise InputError(f"{self.final}: refusing to write an empty shard (no samples)")
        try:
            self._hashing.write(end_padding(self._hashing.size))
            self._publish.close()  # flush, fsync, rename, fsync the directory
            record = ShardRecord(
                name=self.final.name,
                index=self.index,
                split=self.split,
                num_samples=self.num_samples,
                num_identities=len(self._counts),
                first_identity=int(self._first),
                last_identity=int(self._first) + len(self._counts) - 1,
                bytes=self._hashing.size,
                sha256=self._hashing.sha256.hexdigest(),
                identity_counts=tuple(self._counts),
                members=tuple(sorted(self._members)),
            )
            text = json.dumps(record.to_dict(), sort_keys=True, indent=1) + "\n"
            atomic_write_bytes(self.record_file, text.encode())
        except OSError as exc:
            self.abort()
            raise ShardError(f"{self.final}: cannot write shard ({exc})") from None
        self._closed = True
        return record

    def abort(self) -> None:
        """Drop the partial shard: nothing under the final name, no sidecar."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            aborted = ShardError(f"{self.final}: write aborted")
            self._publish.__exit__(ShardError, aborted, None)  # removes the temporary file

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def write_shard(
    dataset_dir: str | Path, shard_index: int, samples: Iterable[Sample], *, split: str = "train"
) -> ShardRecord:
    """Write ``shards/{split}-{index:06d}.tar`` from ``samples`` (grouped by identity)."""
    writer = ShardWriter(dataset_dir, shard_index, split=split)
    try:
        for sample in samples:
            writer.add(sample)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def read_record(path: Path) -> ShardRecord | None:
    """The record in ``path``, or ``None`` if unreadable or if the shard name it gives is not
    the one its split and index imply (a record never points at another file)."""
    try:
        record = ShardRecord.from_dict(json.loads(path.read_text()))
        if record.name != shard_name(record.split, record.index):
            return None
        return record
    except (OSError, ValueError, TypeError, KeyError, InputError, RecursionError):
        return None


def completed_shards(
    dataset_dir: str | Path, *, split: str = "train", check_sha: bool = True
) -> dict[int, ShardRecord]:
    """Shard indices whose tar and sidecar exist and agree (size, and sha256 unless told not to).

    Producers call this before writing and skip the indices it returns.
    """
    check_split(split)
    records_dir = Path(dataset_dir) / RECORDS_DIR
    done: dict[int, ShardRecord] = {}
    if not records_dir.is_dir():
        return done
    pattern = re.compile(rf"^{split}-(\d{{6}})\.json$")
    for path in sorted(records_dir.iterdir()):
        m = pattern.match(path.name)
        if not m:
            continue
        record = read_record(path)
        if record is None or record.index != int(m.group(1)) or record.split != split:
            continue
        tar = Path(dataset_dir) / SHARDS_DIR / record.name
        try:
            if tar.stat().st_size != record.bytes:
                continue
            if check_sha and file_sha256(tar)[0] != record.sha256:
                continue
        except OSError:
            continue
        done[record.index] = record
    return done
