"""``synthface eval verify``: pair lists with --json, .bin with a real (tiny) recognizer, reports."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from synthface.pipeline.cli import main
from synthface.pipeline.formats.verification_bin import write_bin
from synthface.recognition.evaluation.verification import evaluate_scores


def _pairs_case(tmp_path, n_pairs=200, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(150, 12)).astype(np.float32)
    lines, first, second, same = [], [], [], []
    for _ in range(n_pairs):
        i = int(rng.integers(150))
        s = bool(rng.random() < 0.5)
        j = i if s else int(rng.integers(150))
        first.append(i)
        second.append(j)
        same.append(s)
        lines.append(f"{i} {j} {int(s)}")
    # genuine partners are noisy copies of each other: add noise row-wise per pair
    emb2 = emb.copy()
    np.save(tmp_path / "E.npy", np.concatenate([emb, emb2 + 0.7 * rng.normal(size=emb.shape)]))
    second = [j + 150 for j in second]
    lines = [f"{a} {b} {int(s)}" for a, b, s in zip(first, second, same)]
    (tmp_path / "P.txt").write_text("\n".join(lines) + "\n")
    return np.load(tmp_path / "E.npy"), np.array(first), np.array(second), np.array(same)


def test_verify_embeddings_pairs_json(tmp_path, capsys):
    emb, first, second, same = _pairs_case(tmp_path)
    code = main(
        [
            "eval", "verify", "--embeddings", str(tmp_path / "E.npy"),
            "--pairs", str(tmp_path / "P.txt"), "--metric", "both", "--json",
            "--out", str(tmp_path / "rep"),
        ]
    )  # fmt: skip
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    euc, cos = data["results"]
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = ((e[first].astype(np.float64) - e[second]) ** 2).sum(1)
    want = evaluate_scores(dist, same)
    assert euc["metric"] == "euclidean_sq" and cos["metric"] == "cosine"
    assert euc["num_pairs"] == 200 and euc["nfolds"] == 10
    assert euc["accuracy"] == pytest.approx(want.accuracy, abs=1e-12)
    assert 0.6 < euc["accuracy"] < 1.0
    assert abs(cos["accuracy"] - euc["accuracy"]) < 0.05
    for name in ("metrics.json", "report.md", "roc.png", "det.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    assert "accuracy" in (tmp_path / "rep" / "report.md").read_text()


def test_verify_bad_pair_line_is_one_clear_error(tmp_path, capsys):
    _pairs_case(tmp_path)
    (tmp_path / "P.txt").write_text("0 151 1\n3 x 0\n")
    code = main(
        [
            "eval",
            "verify",
            "--embeddings",
            str(tmp_path / "E.npy"),
            "--pairs",
            str(tmp_path / "P.txt"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("synthface: error:") and "P.txt:2" in err and "\n" not in err
    (tmp_path / "P.txt").write_text("0 999 1\n1 2 0\n")
    assert (
        main(
            [
                "eval",
                "verify",
                "--embeddings",
                str(tmp_path / "E.npy"),
                "--pairs",
                str(tmp_path / "P.txt"),
            ]
        )
        == 1
    )
    assert "outside embeddings rows" in capsys.readouterr().err


def _jpeg(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_verify_bin_with_tiny_recognizer(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from synthface.recognition import create_backbone, load_embedder, save_recognizer

    torch.manual_seed(0)
    model = create_backbone("tiny", input_size=32, embedding_dim=16).eval()
    save_recognizer(model, tmp_path / "model", {"note": "untrained; plumbing test only"})
    rng = np.random.default_rng(0)
    images, issame = [], []
    for k in range(40):
        a = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        s = k % 2 == 0
        b = a if s else rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        images += [_jpeg(a), _jpeg(b)]
        issame.append(s)
    write_bin(tmp_path / "toy.bin", images, issame)

    from synthface.recognition.evaluation.embed import embed_bin

    embedder = load_embedder(tmp_path / "model")
    feats, same, xnorm = embed_bin(tmp_path / "toy.bin", embedder)
    assert feats.shape == (80, 16) and same.tolist() == issame and xnorm > 0
    # flip-sum of raw features == the embedder's own flip=True output (after normalising)
    from synthface.pipeline.formats.verification_bin import read_bin
    from synthface.recognition.evaluation.embed import decode_images

    decoded = decode_images(read_bin(tmp_path / "toy.bin")[0], (32, 32))
    ref = embedder.embed(decoded, flip=True)
    np.testing.assert_allclose(feats / np.linalg.norm(feats, axis=1, keepdims=True), ref, atol=1e-5)

    code = main(
        [
            "eval",
            "verify",
            "--bin",
            str(tmp_path / "toy.bin"),
            "--model",
            str(tmp_path / "model"),
            "--json",
        ]
    )
    assert code == 0
    (res,) = json.loads(capsys.readouterr().out)["results"]
    assert res["name"] == "toy" and res["num_pairs"] == 40 and res["xnorm"] == pytest.approx(xnorm)
    # identical images give distance 0 -> genuine pairs are trivially separable
    assert res["accuracy"] == 1.0


def test_verify_bin_requires_model(tmp_path, capsys):
    write_bin(tmp_path / "t.bin", [b"a", b"b"], [True])
    assert main(["eval", "verify", "--bin", str(tmp_path / "t.bin")]) == 1
    assert "--bin needs --model" in capsys.readouterr().err
