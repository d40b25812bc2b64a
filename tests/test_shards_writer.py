"""Writing shards: determinism, atomicity, resume, manifest, and the writer's bad inputs."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from synthface.pipeline.errors import InputError, ShardError
from synthface.pipeline.shards import (
    DatasetWriter,
    Sample,
    ShardWriter,
    completed_shards,
    decode_image,
    encode_image,
    finalize_dataset,
    load_manifest,
    plan_shards,
    write_shard,
)
from tests.test_shards_support import make_dataset, make_samples, tiny_image


def _tree_bytes(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_encode_image_is_deterministic_and_decodes():
    img = tiny_image(1)
    assert encode_image(img, "jpg") == encode_image(img.copy(), "jpg")
    png = encode_image(img, "png")
    assert np.array_equal(decode_image(png), img)  # lossless
    assert decode_image(encode_image(img, "jpg", quality=100)).shape == (16, 16, 3)
    with pytest.raises(InputError, match="HxWx3 uint8"):
        encode_image(img.astype(np.float32))
    with pytest.raises(InputError, match="cannot decode"):
        decode_image(b"\xff\xd8\xff garbage")


def test_rerun_is_byte_identical(tmp_path):
    make_dataset(tmp_path / "a")
    make_dataset(tmp_path / "b")
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a.keys() == b.keys()
    # _info.json names the directory; everything else, shards included, is identical
    assert {k: v for k, v in a.items() if k != "_info.json"} == {
        k: v for k, v in b.items() if k != "_info.json"
    }
    # and re-running into the same directory changes nothing
    make_dataset(tmp_path / "a")
    assert _tree_bytes(tmp_path / "a") == a


def test_tar_headers_and_member_order(tmp_path):
    write_shard(tmp_path, 0, make_samples(0, 1, per_identity=2))
    with tarfile.open(tmp_path / "shards" / "train-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:4]] == [
        "00000000/0000.cls",
        "00000000/0000.jpg",
        "00000000/0000.json",
        "00000000/0000.npy",
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o444)
    }
    assert len(members) == 4 * 4


def test_plan_shards_never_splits_identities():
    plans = plan_shards([3, 3, 3, 10, 1, 1], max_samples=6)
    assert [(p.first_identity, p.last_identity, p.num_samples) for p in plans] == [
        (0, 1, 6),
        (2, 2, 3),
        (3, 3, 10),  # larger than the target: alone
        (4, 5, 2),
    ]
    by_bytes = plan_shards([2] * 4, max_samples=100, max_bytes=4000, bytes_per_sample=1000)
    assert [p.num_samples for p in by_bytes] == [4, 4]
    assert plans == plan_shards([3, 3, 3, 10, 1, 1], max_samples=6)
    with pytest.raises(InputError, match="identity 1"):
        plan_shards([2, 0])


def test_manifest_contents(tmp_path):
    manifest = make_dataset(tmp_path, identities=5, per_identity=3, max_samples=6)
    assert load_manifest(tmp_path) == manifest
    train = manifest["splits"]["train"]
    assert manifest["schema_version"] == 1 and len(train["config_hash"]) == 64
    assert train["num_samples"] == 15 and train["num_identities"] == 5 and train["num_shards"] == 3
    first = train["shards"][0]
    assert first["name"] == "train-000000.tar" and first["num_samples"] == 6
    assert (first["first_identity"], first["last_identity"], first["num_identities"]) == (0, 1, 2)
    assert np.load(tmp_path / "identity_counts.npy").tolist() == [3] * 5
    assert np.load(tmp_path / "identities.npy").shape == (5, 2)
    wids = json.loads((tmp_path / "train-wids.json").read_text())
    assert wids["shardlist"][0] == {
        "url": "shards/train-000000.tar",
        "nsamples": 6,
        "filesize": first["bytes"],
    }
    info = json.loads((tmp_path / "_info.json").read_text())
    assert info["splits"]["train"]["shard_lengths"] == [6, 6, 3]


def test_completed_shards_and_resume(tmp_path):
    plans = plan_shards([3] * 6, max_samples=6)
    for plan in (plans[0], plans[2]):
        write_shard(tmp_path, plan.index, make_samples(plan.first_identity, plan.last_identity))
    assert sorted(completed_shards(tmp_path)) == [0, 2]
    with pytest.raises(ShardError, match=r"gaps \(missing or incomplete: 1\)"):
        finalize_dataset(tmp_path, config={"x": 1})
    # a corrupted complete shard no longer counts (sha256), so a producer rewrites it
    path = tmp_path / "shards" / "train-000000.tar"
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))
    assert sorted(completed_shards(tmp_path)) == [2]
    rewritten = []
    for plan in plans:
        if plan.index not in completed_shards(tmp_path):
            rewritten.append(plan.index)
            write_shard(tmp_path, plan.index, make_samples(plan.first_identity, plan.last_identity))
    assert rewritten == [0, 1]
    manifest = finalize_dataset(tmp_path, config={"x": 1})
    assert manifest["splits"]["train"]["num_samples"] == 18


def test_oserror_mid_shard_leaves_nothing_complete(tmp_path, monkeypatch):
    writer = ShardWriter(tmp_path, 0)
    samples = list(make_samples(0, 1))
    writer.add(samples[0])
    calls = {"n": 0}
    real_write = writer._file.write

    def failing_write(data):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(28, "No space left on device")
        return real_write(data)

    monkeypatch.setattr(writer._file, "write", failing_write)
    with pytest.raises(ShardError, match="No space left on device") as err:
        for s in samples[1:]:
            writer.add(s)
        writer.close()
    assert "train-000000.tar" in str(err.value) and "\n" not in str(err.value)
    assert list((tmp_path / "shards").iterdir()) == []  # no tar, no temporary
    assert completed_shards(tmp_path) == {}


def test_failure_keeps_previous_complete_shard_out_of_resume(tmp_path):
    write_shard(tmp_path, 0, make_samples(0, 1))
    assert 0 in completed_shards(tmp_path)

    def broken():
        yield from make_samples(0, 0)
        raise RuntimeError("generator crashed")

    with pytest.raises(RuntimeError):
        write_shard(tmp_path, 0, broken())
    # the stale sidecar was removed before the rewrite started: shard 0 is not complete
    assert completed_shards(tmp_path) == {}
    assert not list((tmp_path / "shards").glob(".*"))


def test_writer_rejects_bad_samples(tmp_path):
    png = encode_image(tiny_image(0), "png")
    jpg = encode_image(tiny_image(0), "jpg")
    with pytest.raises(InputError, match="duplicate key"):
        write_shard(tmp_path, 0, [Sample(0, 0, jpg), Sample(0, 0, jpg)])
    with pytest.raises(InputError, match="not JPG data"):
        write_shard(tmp_path, 0, [Sample(0, 0, png, ext="jpg")])
    with pytest.raises(InputError, match="grouped and contiguous"):
        write_shard(tmp_path, 0, [Sample(0, 0, jpg), Sample(2, 0, jpg)])
    with pytest.raises(InputError, match="empty shard"):
        write_shard(tmp_path, 0, [])
    with pytest.raises(InputError, match="JSON-serialisable"):
        write_shard(tmp_path, 0, [Sample(0, 0, jpg, meta={"x": object()})])
    with pytest.raises(InputError, match="out of range"):
        write_shard(tmp_path, 0, [Sample(0, 10000, jpg)])
    assert completed_shards(tmp_path) == {}
    assert not list((tmp_path / "shards").iterdir())


def test_output_directory_holding_another_dataset(tmp_path):
    make_dataset(tmp_path / "d", config={"seed": 1})
    with pytest.raises(ShardError, match="different 'train' dataset"):
        DatasetWriter(tmp_path / "d", config={"seed": 2})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.pdf").write_bytes(b"%PDF")
    with pytest.raises(ShardError, match="not empty and holds no synthface dataset"):
        DatasetWriter(tmp_path / "other", config={"seed": 2})
    # an unfinished run of another config that wrote a shard
    w = DatasetWriter(tmp_path / "half", config={"seed": 1}, max_samples=1)
    for s in make_samples(0, 3, per_identity=1):
        w.add(s)
    w.abort()
    assert completed_shards(tmp_path / "half")
    with pytest.raises(ShardError, match="part of an unfinished 'train' dataset"):
        DatasetWriter(tmp_path / "half", config={"seed": 3})


def test_dataset_writer_rolls_at_identity_boundaries(tmp_path):
    w = DatasetWriter(tmp_path, config={"k": 1}, max_samples=5)
    for s in make_samples(0, 4, per_identity=2):
        w.add(s)
    manifest = w.close(extra={"note": "x"})
    shards = manifest["splits"]["train"]["shards"]
    assert [(s["first_identity"], s["last_identity"]) for s in shards] == [(0, 1), (2, 3), (4, 4)]
    # a re-run on smaller input (same config) drops the shards it no longer produces
    w = DatasetWriter(tmp_path, config={"k": 1}, max_samples=5)
    for s in make_samples(0, 1, per_identity=2):
        w.add(s)
    assert w.close()["splits"]["train"]["num_shards"] == 1
    assert [p.name for p in (tmp_path / "shards").iterdir()] == ["train-000000.tar"]
    with pytest.raises(InputError, match="expected 0"):
        DatasetWriter(tmp_path / "x", config={}).add(next(make_samples(1, 1)))
    with pytest.raises(InputError, match="empty source"):
        DatasetWriter(tmp_path / "y", config={}).close()


def test_tar_bytes_equal_stdlib_tarfile_and_reader_handles_other_tars(tmp_path):
    import io as _io

    from synthface.pipeline.shards.tarformat import end_padding, member_bytes, walk

    members = [
        ("00000000/0000.cls", b"0"),
        ("00000000/0000.jpg", b"x" * 1000),
        ("00000000/0000.json", b"{}"),
    ]
    ours = b"".join(member_bytes(n, d) for n, d in members)
    ours += end_padding(len(ours))
    buf = _io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uname, info.gname = len(data), 0o444, "", ""
            tar.addfile(info, _io.BytesIO(data))
    assert ours == buf.getvalue()
    # a GNU/pax tar with a long name and a directory entry reads too
    long = "d" * 120 + "/0001.jpg"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = _io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            d = tarfile.TarInfo("somedir")
            d.type = tarfile.DIRTYPE
            tar.addfile(d)
            info = tarfile.TarInfo(long)
            info.size = 3
            tar.addfile(info, _io.BytesIO(b"abc"))
        buf.seek(0)
        assert [(n, data) for n, _, _, data in walk(buf, "x")] == [(long, b"abc")]
    bad = bytearray(ours)
    bad[10] ^= 1
    with pytest.raises(ShardError, match="bad tar header checksum at byte 0"):
        list(walk(_io.BytesIO(bytes(bad)), "x.tar"))
    with pytest.raises(ShardError, match="truncated"):
        list(walk(_io.BytesIO(ours[:1500]), "x.tar"))
