"""Verification .bin codec: round trip, real-file variants, and refusal of hostile pickles."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from synthface.pipeline.errors import InputError
from synthface.pipeline.formats.verification_bin import read_bin, write_bin


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_round_trip_and_deterministic_bytes(tmp_path):
    images = [_png((i * 20, 0, 0)) for i in range(6)]
    issame = [True, False, True]
    write_bin(tmp_path / "a.bin", images, issame)
    write_bin(tmp_path / "b.bin", images, issame)
    got_images, got_same = read_bin(tmp_path / "a.bin")
    assert got_images == images
    assert got_same.dtype == bool and got_same.tolist() == issame
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]  # no temp files left
    # plain pickle.load (what insightface's load_bin does) reads our files
    with open(tmp_path / "a.bin", "rb") as fh:
        bins, labels = pickle.load(fh, encoding="bytes")
    assert bins == images and labels == issame


def test_write_bin_rejects_count_mismatch(tmp_path):
    with pytest.raises(InputError, match="3 images for 2 pairs"):
        write_bin(tmp_path / "x.bin", [b"a", b"b", b"c"], [True, False])
    assert not (tmp_path / "x.bin").exists()


def test_reads_python2_style_pickle(tmp_path):
    # Hand-assembled protocol-2 pickle as Python 2 writes (bins, issame) with str images:
    # SHORT_BINSTRING ('U') items, NEWTRUE/NEWFALSE labels, TUPLE2.
    py2 = (
        b"\x80\x02"
        b"]q\x00(U\x03abcq\x01U\x03defq\x02U\x01gq\x03U\x01hq\x04e"
        b"]q\x05(\x88\x89e\x86q\x06."
    )
    (tmp_path / "py2.bin").write_bytes(py2)
    images, issame = read_bin(tmp_path / "py2.bin")
    assert images == [b"abc", b"def", b"g", b"h"]
    assert issame.tolist() == [True, False]


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_accepts_numpy_bool_labels_any_protocol(tmp_path, protocol):
    obj = ([b"a", b"b", b"c", b"d"], [np.bool_(True), np.bool_(False)])
    (tmp_path / "n.bin").write_bytes(pickle.dumps(obj, protocol=protocol))
    images, issame = read_bin(tmp_path / "n.bin")
    assert images == [b"a", b"b", b"c", b"d"] and issame.tolist() == [True, False]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize(
    "build",
    [
        lambda m: _Evil(m),  # whole file is the payload
        lambda m: ([b"a", _Evil(m)], [True]),  # hidden inside the image list
        lambda m: ([b"a", b"b"], [_EvalEvil(m)]),  # hidden in the labels, via builtins.eval
    ],
)
def test_malicious_pickle_refused_without_side_effect(tmp_path, build):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(build(marker), protocol=2)
    (tmp_path / "evil.bin").write_bytes(payload)
    with pytest.raises(InputError, match="refused to load"):
        read_bin(tmp_path / "evil.bin")
    assert not marker.exists()
    # the payload is real: an unrestricted pickle.loads would have run it
    pickle.loads(payload)
    assert marker.exists()


def test_refuses_numpy_array_and_other_dtypes(tmp_path):
    # bool arrays load (tests/test_thirdparty_formats.py); arrays of other dtypes do not
    (tmp_path / "arr.bin").write_bytes(pickle.dumps(([b"a", b"b"], np.array([1])), protocol=2))
    with pytest.raises(InputError, match="numpy dtype 'i8'"):
        read_bin(tmp_path / "arr.bin")
    (tmp_path / "i8.bin").write_bytes(pickle.dumps(([b"a", b"b"], [np.int64(1)]), protocol=2))
    with pytest.raises(InputError, match="refused"):
        read_bin(tmp_path / "i8.bin")


@pytest.mark.parametrize(
    "obj,msg",
    [
        ({"bins": []}, "must hold a pair"),
        (([b"a", "text"], [True]), "list of encoded image bytes"),
        (([b"a", b"b"], [1]), "list of booleans"),
        (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
        (([b"a", b"b"], [True], []), "must hold a pair"),
    ],
)
def test_wrong_structure_rejected(tmp_path, obj, msg):
    (tmp_path / "w.bin").write_bytes(pickle.dumps(obj))
    with pytest.raises(InputError, match=msg):
        read_bin(tmp_path / "w.bin")


def test_truncated_and_missing_files(tmp_path):
    write_bin(tmp_path / "ok.bin", [b"a", b"b"], [True])
    data = (tmp_path / "ok.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"not a verification \.bin"):
        read_bin(tmp_path / "cut.bin")
    with pytest.raises(InputError, match="cannot read"):
        read_bin(tmp_path / "missing.bin")
