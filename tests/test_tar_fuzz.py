"""Fuzzing the shard readers: any bytes either give valid samples or the project's error.

Seeded and bounded: ``CASES`` mutated or random tars, each under a wall-clock limit (a
hang fails the case instead of the suite), each read by every reader the training and
tools use — the streaming walker, the offset index, sample decoding and ``verify``'s scan.
A case passes when every reader finishes with samples that satisfy the sample contract, or
raises a ``SynthfaceError`` (one line, names the shard); anything else (``ValueError``,
``MemoryError``, a hang) is a bug.
"""

from __future__ import annotations

import io
import os
import random
import signal
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from synthface.pipeline.errors import ShardError, SynthfaceError
from synthface.pipeline.shards import write_shard
from synthface.pipeline.shards.decode import to_sample
from synthface.pipeline.shards.index_reader import _index_shard, iter_raw
from synthface.pipeline.shards.tarformat import BLOCK, walk
from synthface.pipeline.shards.verify import _Report, _scan_shard
from tests.test_shards_support import make_samples

CASES = int(os.environ.get("SYNTHFACE_FUZZ_CASES", "300"))  # more for a longer hunt
SEED = 20240611
CASE_SECONDS = 2.0


@contextmanager
def _time_limit(seconds: float, what: str):
    def _raise(signum, frame):
        raise TimeoutError(f"{what}: reader still running after {seconds}s (hang)")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)


def _pax_tar(records: bytes) -> bytes:
    """A tar whose first member is a pax header holding ``records`` verbatim."""
    head = bytearray(tarfile.TarInfo("././@PaxHeader").tobuf(tarfile.USTAR_FORMAT))
    head[124:136] = b"%011o\0" % len(records)
    head[156:157] = b"x"
    _checksum(head)
    body = records + b"\0" * (-len(records) % BLOCK)
    info = tarfile.TarInfo("00000000/0000.cls")
    info.size = 1
    return bytes(head) + body + info.tobuf(tarfile.USTAR_FORMAT) + b"0" + b"\0" * 511 + b"\0" * 1024


def _base_shards(tmp: Path) -> list[bytes]:
    out = []
    for ext, embed in (("jpg", True), ("png", False)):
        rec = write_shard(tmp / ext, 0, make_samples(0, 1, per_identity=2, ext=ext, embed=embed))
        out.append((tmp / ext / "shards" / rec.name).read_bytes())
    return out


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(9)
    if kind == 0:  # flip random bytes
        for _ in range(rng.randint(1, 16)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate anywhere
        del b[rng.randrange(len(b)) :]
    elif kind == 2:  # a random (checksum-fixed) size field in some header
        h = BLOCK * rng.randrange(len(b) // BLOCK)
        b[h + 124 : h + 136] = rng.choice(
            [b"%011o\0" % rng.randrange(8**11), b"-0000000001\0", b"9" * 12, b"\x80" + b"\xff" * 11]
        )
        _checksum_at(b, h)
    elif kind == 3:  # a random member type
        h = BLOCK * rng.randrange(len(b) // BLOCK)
        b[h + 156] = rng.choice(b"0125LKxgS\0\xff")
        _checksum_at(b, h)
    elif kind == 4:  # random pax records: lengths zero, huge, negative, non-numeric, short
        length = rng.choice([b"0", b"1", b"3", b"-5", b"x", b"99999999", b"", b"12"])
        body = rng.choice([b"path=a\n", b"size=", b"=\n", b"", b"path"]) * rng.randint(1, 3)
        return _pax_tar(length + rng.choice([b" ", b""]) + body)
    elif kind == 5:  # splice a block from elsewhere
        i, j = rng.randrange(len(b) // BLOCK), rng.randrange(len(b) // BLOCK)
        b[i * BLOCK : (i + 1) * BLOCK] = data[j * BLOCK : (j + 1) * BLOCK]
    elif kind == 6:  # pure noise, maybe with a valid-looking first header
        noise = bytearray(rng.randbytes(rng.randrange(1, 4 * BLOCK)))
        if rng.random() < 0.5 and len(noise) >= BLOCK:
            noise[:BLOCK] = data[:BLOCK]
        return bytes(noise)
    elif kind == 7:  # garble a member's payload (image / json / npy / cls)
        h = BLOCK * rng.randrange(len(b) // BLOCK)
        for k in range(h, min(len(b), h + rng.randint(1, 64))):
            b[k] = rng.randrange(256)
    else:  # insert bytes: every later header is misaligned
        at = rng.randrange(len(b))
        b[at:at] = rng.randbytes(rng.randint(1, 700))
    return bytes(b)


def _checksum_at(b: bytearray, h: int) -> None:
    if h + BLOCK <= len(b):
        header = bytearray(b[h : h + BLOCK])
        _checksum(header)
        b[h : h + BLOCK] = header


def _read_everything(path: Path) -> int:
    """Run every reader over one shard file; return the samples the streaming reader gave."""
    n = 0
    for raw in iter_raw(path):
        if "jpg" not in raw and "png" not in raw:
            continue  # a sample without an image is to_sample's error, tested below
        sample = to_sample(raw, decode=True)
        assert isinstance(sample["label"], int) and isinstance(sample["meta"], dict)
        assert sample["image"].dtype == np.uint8 and sample["image"].ndim == 3
        n += 1
    _index_shard(path)
    with open(path, "rb") as f:
        for _ in walk(f, str(path), read=False):
            pass
    rep = _Report()
    _scan_shard(rep, path, classes=2, decode=True)  # collects problems; must not raise
    return n


def test_readers_end_on_any_bytes_with_samples_or_a_shard_error(tmp_path):
    rng = random.Random(SEED)
    bases = _base_shards(tmp_path / "base")
    outcomes = {"samples": 0, "error": 0}
    t0 = time.perf_counter()
    for case in range(CASES):
        data = _mutate(rng, rng.choice(bases))
        path = tmp_path / f"case-{case:03d}.tar"
        path.write_bytes(data)
        try:
            with _time_limit(CASE_SECONDS, f"case {case} (seed {SEED})"):
                _read_everything(path)
            outcomes["samples"] += 1
        except SynthfaceError as exc:
            message = str(exc)
            assert "\n" not in message and len(message) < 600, (case, message)
            outcomes["error"] += 1
        path.unlink()
    elapsed = time.perf_counter() - t0
    print(f"tar fuzz: {CASES} cases in {elapsed:.2f}s: {outcomes}")
    assert outcomes["error"] > CASES // 3 and outcomes["samples"] > 0  # both paths exercised


@pytest.mark.parametrize("length", [b"0", b"00", b"1", b"2"])
def test_zero_or_tiny_pax_record_length_terminates(tmp_path, length):
    path = tmp_path / "pax.tar"
    path.write_bytes(_pax_tar(length + b" path=x\n"))
    with _time_limit(CASE_SECONDS, "pax"), pytest.raises(ShardError, match=r"pax\.tar: .*byte"):
        list(iter_raw(path))


def test_non_numeric_pax_length_is_a_shard_error(tmp_path):
    path = tmp_path / "pax.tar"
    path.write_bytes(_pax_tar(b"abc path=x\n"))
    with pytest.raises(ShardError, match=r"pax\.tar: malformed pax record at byte 512"):
        list(iter_raw(path))


def test_size_beyond_the_file_is_refused_before_reading(tmp_path):
    """A header claiming 8 GB must not make the reader allocate 8 GB."""
    info = tarfile.TarInfo("00000000/0000.jpg")
    head = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    head[124:136] = b"%011o\0" % (8**11 - 1)
    _checksum(head)
    path = tmp_path / "big.tar"
    path.write_bytes(bytes(head) + b"\0" * 1024)
    for read in (True, False):
        with open(path, "rb") as f, pytest.raises(ShardError, match=r"big\.tar: member .*byte"):
            list(walk(f, str(path), read=read))
    stream = io.BytesIO(path.read_bytes())
    stream.seekable = lambda: False  # a pipe: no file size to compare against
    with pytest.raises(ShardError, match="more than"):
        list(walk(stream, "pipe"))
