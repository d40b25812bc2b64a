"""RecordIO reader (no mxnet) and the from-rec converter, against an independent writer."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from synthface.pipeline.cli import main
from synthface.pipeline.errors import InputError, ShardError
from synthface.pipeline.formats.recordio import IndexedRecordIO, record_parts, unpack
from synthface.pipeline.shards import (
    ShardIndexDataset,
    completed_shards,
    encode_image,
    load_manifest,
)
from synthface.pipeline.shards.rec import to_rec
from synthface.pipeline.shards.verify import verify_dataset
from tests.test_shards_support import _record_parts, ir_record, jpeg_file_bytes, write_rec

MAGIC = struct.pack("<I", 0xCED7230A)


def _records(labels):
    return [(label, jpeg_file_bytes(k)) for k, label in enumerate(labels)]


def test_reader_joins_multipart_records(tmp_path):
    # the 24-byte IRHeader comes first, so payload offsets 0, 8, 12 are 4-byte aligned in the record
    payload = MAGIC + b"abcd" + MAGIC + MAGIC + b"xyz" + MAGIC[:2]
    write_rec(tmp_path / "train", [(5, b"plain"), (7, payload)], header0=False)
    raw = (tmp_path / "train.rec").read_bytes()
    assert raw.count(MAGIC) == 1 + 4  # record 0 whole; record 1 split into 4 parts
    rec = IndexedRecordIO(tmp_path / "train.rec", tmp_path / "train.idx")
    header, data = unpack(rec.read_idx(1))
    assert header.label == 7.0 and data == payload
    assert rec.read_header(0).label == 5.0 and rec.read_header(1).label == 7.0
    head, body = unpack(ir_record([1.0, 2.0, 3.0], b"img"))
    assert head.flag == 3 and head.label == (1.0, 2.0, 3.0) and body == b"img"


def test_from_rec_groups_unsorted_labels(tmp_path):
    labels = [2, 0, 5, 2, 0, 5, 5]  # label 1, 3, 4 unused; records interleaved
    records = _records(labels)
    write_rec(tmp_path / "faces" / "train", records, classes=6)
    assert (
        main(
            [
                "shards",
                "from-rec",
                str(tmp_path / "faces"),
                str(tmp_path / "ds"),
                "--max-samples",
                "3",
            ]
        )
        == 0
    )
    split = load_manifest(tmp_path / "ds")["splits"]["train"]
    assert (split["num_identities"], split["num_samples"]) == (3, 7)
    assert split["extra"] == {"property_classes": 6}
    assert np.load(tmp_path / "ds" / "source_labels.npy").tolist() == [0, 2, 5]
    assert verify_dataset(tmp_path / "ds")["ok"]
    ds = ShardIndexDataset(tmp_path / "ds", decode=False)
    got = [(ds[i]["label"], ds[i]["meta"]["source_label"], ds[i]["image"]) for i in range(len(ds))]
    want = sorted(((lab, k) for k, lab in enumerate(labels)), key=lambda t: t[0])
    assert [g[1] for g in got] == [w[0] for w in want]
    assert [g[2] for g in got] == [records[k][1] for _, k in want]  # payload bytes untouched
    assert [g[0] for g in got] == [0, 0, 1, 1, 2, 2, 2]


def test_from_rec_prefix_forms_and_no_header_record(tmp_path):
    write_rec(tmp_path / "x" / "data", _records([0, 1]), header0=False)
    m = main(["shards", "from-rec", str(tmp_path / "x" / "data.rec"), str(tmp_path / "ds")])
    assert m == 0 and load_manifest(tmp_path / "ds")["splits"]["train"]["num_samples"] == 2


def _bad(tmp_path, mutate, match):
    write_rec(tmp_path / "r" / "train", _records([0, 0, 1]), classes=2)
    mutate(tmp_path / "r")
    with pytest.raises(InputError, match=match) as err:
        from synthface.pipeline.shards.rec import from_rec

        from_rec(tmp_path / "r", tmp_path / "ds")
    assert "\n" not in str(err.value)
    assert (
        completed_shards(tmp_path / "ds") == {} and not (tmp_path / "ds" / "dataset.json").exists()
    )


def test_truncated_rec(tmp_path):
    def cut(d):
        data = (d / "train.rec").read_bytes()
        (d / "train.rec").write_bytes(data[: len(data) - 40])

    _bad(tmp_path, cut, "runs past the end of the file.*truncated .rec")


def test_truncated_rec_before_indexed_offset(tmp_path):
    def cut(d):
        last = int((d / "train.idx").read_text().splitlines()[-1].split("\t")[1])
        (d / "train.rec").write_bytes((d / "train.rec").read_bytes()[:last])

    _bad(tmp_path, cut, "beyond the end of train.rec.*truncated .rec")


def test_truncated_idx(tmp_path):
    def cut(d):
        text = (d / "train.idx").read_text()
        (d / "train.idx").write_text(text[: len(text) - 3])

    _bad(tmp_path, cut, r"train.idx: line 4: expected 'KEY<TAB>OFFSET' \(truncated .idx\?\)")


def test_idx_missing_records_named_by_header(tmp_path):
    def drop(d):
        lines = (d / "train.idx").read_text().splitlines(keepends=True)
        (d / "train.idx").write_text("".join(lines[:-1]))

    _bad(tmp_path, drop, "record 3 is not indexed")


def test_idx_with_duplicate_key(tmp_path):
    def dup(d):
        lines = (d / "train.idx").read_text().splitlines(keepends=True)
        (d / "train.idx").write_text("".join([*lines, lines[1]]))

    _bad(tmp_path, dup, "key 1 listed twice")


def test_corrupt_magic_and_non_image_payload_and_labels(tmp_path):
    def smash(d):
        data = bytearray((d / "train.rec").read_bytes())
        off = int((d / "train.idx").read_text().splitlines()[2].split("\t")[1])
        data[off] ^= 0xFF
        (d / "train.rec").write_bytes(bytes(data))

    _bad(tmp_path, smash, "record 2 at offset .*bad magic")
    write_rec(tmp_path / "p" / "train", [(0, b"not an image")])
    with pytest.raises(InputError, match="record 1: payload is not a JPEG or PNG image"):
        main_from_rec(tmp_path / "p", tmp_path / "o1")
    write_rec(tmp_path / "q" / "train", _records([0, 3]), classes=2)
    with pytest.raises(InputError, match=r"label 3 outside 0\.\.1"):
        main_from_rec(tmp_path / "q", tmp_path / "o2")
    (tmp_path / "q" / "property").write_text("lots,112,112")
    with pytest.raises(InputError, match="property: expected 'CLASSES,HEIGHT,WIDTH'"):
        main_from_rec(tmp_path / "q", tmp_path / "o3")
    with pytest.raises(InputError, match="missing"):
        main_from_rec(tmp_path / "nothing", tmp_path / "o4")


def main_from_rec(prefix, out):
    from synthface.pipeline.shards.rec import from_rec

    return from_rec(prefix, out)


# --------------------------------------------------------------------------- to-rec


def _tagged_jpeg(seed: int) -> bytes:
    """A 32x32 JPEG followed by the RecordIO magic at 4-byte-aligned payload offsets
    (PIL ignores bytes after the end-of-image marker), so the record must be split."""
    rng = np.random.default_rng(seed)
    data = encode_image(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "jpg")
    data += b"\x00" * (-len(data) % 4)
    return data + MAGIC + b"tail" + MAGIC + MAGIC


def _folder_dataset(root, sizes=(32, 32)):
    src = root / "src"
    rng = np.random.default_rng(0)
    for ident, n in (("anna", 3), ("ben", 1), ("cleo", 4)):
        (src / ident).mkdir(parents=True)
        for k in range(n):
            img = rng.integers(0, 256, (sizes[k % 2], sizes[k % 2], 3), dtype=np.uint8)
            ext = "png" if k == 1 else "jpg"
            (src / ident / f"{k}.{ext}").write_bytes(encode_image(img, ext))
    (src / "ben" / "9.jpg").write_bytes(_tagged_jpeg(1))
    ds = root / "ds"
    assert main(["shards", "from-folder", str(src), str(ds), "--max-samples", "4"]) == 0
    return ds


def test_to_rec_from_rec_round_trip_keeps_bytes_and_labels(tmp_path):
    ds = _folder_dataset(tmp_path)
    assert main(["shards", "to-rec", str(ds), str(tmp_path / "rec")]) == 0
    rec_dir = tmp_path / "rec"
    assert (rec_dir / "property").read_text() == "3,32,32\n"
    raw = (rec_dir / "train.rec").read_bytes()
    assert raw.count(MAGIC) > 1 + 9 + 3  # the tagged JPEG's record was split into parts
    assert main(["shards", "from-rec", str(rec_dir), str(tmp_path / "back")]) == 0
    a = ShardIndexDataset(ds, decode=False)
    b = ShardIndexDataset(tmp_path / "back", decode=False)
    assert len(a) == len(b) == 9
    assert [a[i]["image"] for i in range(9)] == [b[i]["image"] for i in range(9)]
    assert a.labels.tolist() == b.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert verify_dataset(tmp_path / "back")["ok"]
    # re-running writes the same bytes
    assert main(["shards", "to-rec", str(ds), str(tmp_path / "rec")]) == 0
    assert (rec_dir / "train.rec").read_bytes() == raw


def test_to_rec_layout_is_what_mxfacedataset_reads(tmp_path):
    """Record 0: flag 2, label (N+1, N+1+C); images 1..N with scalar labels; identity
    records N+1..N+C with their (first, end) image ranges; keys in .idx order."""
    ds = _folder_dataset(tmp_path)
    info = to_rec(ds, tmp_path / "rec")
    assert (info["records"], info["identities"]) == (9, 3)
    with IndexedRecordIO(tmp_path / "rec" / "train.rec", tmp_path / "rec" / "train.idx") as rec:
        assert rec.keys == list(range(13))
        header = rec.read_header(0)
        assert header.flag == 2 and header.label == (10.0, 13.0)
        labels = []
        for key in range(1, 10):
            head, payload = unpack(rec.read_idx(key))
            assert head.flag == 0 and head.id == key and payload[:2] in (b"\xff\xd8", b"\x89P")
            labels.append(int(head.label))
        ranges = [tuple(int(v) for v in rec.read_header(10 + c).label) for c in range(3)]
    assert labels == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert ranges == [(1, 4), (4, 6), (6, 10)]


def test_record_encoding_matches_an_independent_writer():
    rng = np.random.default_rng(5)
    for n in (0, 3, 4, 17, 64):
        data = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        for pos in (0, 4, 9, 12):  # aligned and unaligned magic occurrences
            if pos + 4 <= n:
                data[pos : pos + 4] = MAGIC
        assert record_parts(bytes(data)) == _record_parts(bytes(data))


def test_to_rec_refuses_mixed_sizes_and_writes_nothing(tmp_path):
    ds = _folder_dataset(tmp_path, sizes=(32, 24))
    with pytest.raises(ShardError, match=r"image is 24x24, earlier ones 32x32"):
        to_rec(ds, tmp_path / "rec")
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == []
