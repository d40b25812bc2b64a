"""IJB-style 1:1: meta parsing, media pooling, TAR@FAR nearest reading, alignment, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from synthface.pipeline.cli import main
from synthface.pipeline.errors import InputError
from synthface.recognition.evaluation import ijb, roc


def ref_pool(feats, templates, medias):
    """insightface's image2template_feature, loop for loop."""
    uniq = np.unique(templates)
    out = np.zeros((len(uniq), feats.shape[1]))
    for k, t in enumerate(uniq):
        idx = np.flatnonzero(templates == t)
        f, m = feats[idx], medias[idx]
        media_feats = []
        for u in np.unique(m):
            sel = m == u
            media_feats.append(f[sel][0] if sel.sum() == 1 else f[sel].mean(0))
        s = np.sum(media_feats, axis=0)
        out[k] = s / np.linalg.norm(s)
    return uniq, out


def ref_tar_at_far(labels, scores, fars):
    """sklearn-style ROC built point by point, collinear points dropped, nearest-FPR reading."""
    labels = np.asarray(labels, bool)
    thr = sorted(set(scores.tolist()), reverse=True)
    fps = [int(np.sum((scores >= t) & ~labels)) for t in thr]
    tps = [int(np.sum((scores >= t) & labels)) for t in thr]
    keep = [0]
    for i in range(1, len(thr) - 1):
        if (fps[i + 1] - 2 * fps[i] + fps[i - 1]) != 0 or (
            tps[i + 1] - 2 * tps[i] + tps[i - 1]
        ) != 0:
            keep.append(i)
    keep.append(len(thr) - 1)
    fpr = [0.0] + [fps[i] / fps[-1] for i in keep]
    tpr = [0.0] + [tps[i] / tps[-1] for i in keep]
    out = {}
    for target in fars:
        best = None
        for j in range(len(fpr) - 1, -1, -1):  # insightface flips, then min() keeps first
            d = abs(fpr[j] - target)
            if best is None or d < best[0]:
                best = (d, tpr[j])
        out[target] = best[1]
    return out


def test_pooling_hand_computed():
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [0.0, 2.0]], np.float32)
    templates = np.array([7, 7, 7, 9])
    medias = np.array([1, 1, 2, 5])
    tids, tf = ijb.pool_templates(feats, templates, medias)
    assert tids.tolist() == [7, 9]
    # template 7: mean(media 1) = (0.5, 0.5); + media 2 (3, 4) = (3.5, 4.5)
    np.testing.assert_allclose(tf[0], np.array([3.5, 4.5]) / np.hypot(3.5, 4.5), rtol=1e-6)
    np.testing.assert_allclose(tf[1], [0.0, 1.0])


def test_pooling_matches_reference_loop():
    rng = np.random.default_rng(0)
    n = 300
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    templates = rng.integers(0, 40, n) * 3 + 100
    medias = rng.integers(0, 6, n)
    tids, tf = ijb.pool_templates(feats, templates, medias)
    rt, rf = ref_pool(feats.astype(np.float64), templates, medias)
    np.testing.assert_array_equal(tids, rt)
    np.testing.assert_allclose(tf, rf, atol=1e-5)


def test_image_feature_modes():
    raw = np.array([[3.0, 4.0]], np.float32)
    flip = np.array([[0.0, 5.0]], np.float32)
    np.testing.assert_allclose(ijb.image_features(raw), [[0.6, 0.8]])
    np.testing.assert_allclose(
        ijb.image_features(raw, flip), [[3 / np.hypot(3, 9), 9 / np.hypot(3, 9)]], rtol=1e-6
    )
    np.testing.assert_allclose(ijb.image_features(raw, norm_score=True), raw)
    np.testing.assert_allclose(
        ijb.image_features(raw, faceness=np.array([0.5]), detector_score=True), [[0.3, 0.4]]
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tar_at_far_matches_reference(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(3000) < 0.1
    scores = np.round(rng.normal(size=3000) + 2.0 * labels, 2)
    fars = [1e-4, 1e-3, 1e-2, 1e-1]
    got = roc.tar_at_far(labels, scores, fars)
    want = ref_tar_at_far(labels, scores, fars)
    assert got == pytest.approx(want)


def test_template_scores_and_unknown_template():
    tids = np.array([1, 5])
    tf = np.array([[1.0, 0.0], [0.6, 0.8]])
    np.testing.assert_allclose(
        ijb.template_scores(tids, tf, np.array([1, 5]), np.array([5, 5])), [0.6, 1.0]
    )
    with pytest.raises(InputError, match="template 3"):
        ijb.template_scores(tids, tf, np.array([1]), np.array([3]))


def test_align_faces_puts_landmarks_on_template(tmp_path):
    from insightface.utils.face_align import arcface_dst

    # 200x200 image, face twice the template size, shifted by (20, 10); a white dot
    # at the left eye must land at the template's left eye after alignment.
    lmk = arcface_dst * 1.5 + np.array([20.0, 10.0])
    img = np.zeros((200, 200, 3), np.uint8)
    x, y = np.round(lmk[0]).astype(int)
    img[y - 2 : y + 3, x - 2 : x + 3] = 255
    Image.fromarray(img).save(tmp_path / "f.png")
    (batch,) = list(ijb.align_faces(tmp_path, ["f.png"], [lmk]))
    crop = batch[0]
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    ys, xs = np.nonzero(crop[..., 0] > 128)
    assert abs(xs.mean() - arcface_dst[0, 0]) < 1.0 and abs(ys.mean() - arcface_dst[0, 1]) < 1.0


def _write_meta(d, n_templates=30, per=4, seed=0):
    """Tiny IJB-like meta: templates of one identity each; features from identity + noise."""
    rng = np.random.default_rng(seed)
    ident = rng.normal(size=(n_templates // 2, 16))
    names, tids, mids, feats = [], [], [], []
    for t in range(n_templates):
        for k in range(per):
            names.append(f"img/{t}_{k}.jpg")
            tids.append(t)
            mids.append(t * 10 + k // 2)
            feats.append(ident[t // 2] + 0.9 * rng.normal(size=16))
    (d / "tiny_face_tid_mid.txt").write_text(
        "".join(f"{n} {t} {m}\n" for n, t, m in zip(names, tids, mids))
    )
    pts = " ".join(["50.0"] * 10)
    (d / "tiny_name_5pts_score.txt").write_text("".join(f"{n} {pts} 0.9\n" for n in names))
    pairs = [
        (a, b, int(a // 2 == b // 2)) for a in range(n_templates) for b in range(a + 1, n_templates)
    ]
    (d / "tiny_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {lab}\n" for a, b, lab in pairs)
    )
    return np.array(feats, np.float32), np.array(tids), np.array(mids), pairs


def test_cli_ijb_with_features(tmp_path, capsys):
    feats, tids, mids, pairs = _write_meta(tmp_path)
    np.save(tmp_path / "feats.npy", feats)
    code = main(
        [
            "eval", "ijb", "--meta-dir", str(tmp_path), "--target", "tiny",
            "--features", str(tmp_path / "feats.npy"), "--no-flip", "--json",
            "--out", str(tmp_path / "rep"),
        ]
    )  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    # independent: reference pooling + reference TAR reading
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    _, rf = ref_pool(f.astype(np.float64), tids, mids)
    p = np.array(pairs)
    scores = (rf[p[:, 0]] * rf[p[:, 1]]).sum(1)
    want = ref_tar_at_far(p[:, 2].astype(bool), scores, list(roc.IJB_FARS))
    assert out["num_pairs"] == len(pairs) and out["num_templates"] == 30
    for k, v in want.items():
        assert out["tar_at_far"][f"{k:g}"] == pytest.approx(v)
    for name in ("metrics.json", "report.md", "roc.png", "det.png", "hist.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0


def test_meta_order_mismatch_is_reported(tmp_path, capsys):
    _write_meta(tmp_path)
    lines = (tmp_path / "tiny_name_5pts_score.txt").read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    (tmp_path / "tiny_name_5pts_score.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"line 1 is 'img/0_1\.jpg'"):
        ijb.read_meta(tmp_path, "tiny")
    (tmp_path / "tiny_template_pair_label.txt").write_text("1 2 3\n")
    code = main(
        [
            "eval",
            "ijb",
            "--meta-dir",
            str(tmp_path),
            "--target",
            "tiny",
            "--features",
            "x.npy",
            "--no-flip",
        ]
    )
    assert code == 1
    assert "synthface: error:" in capsys.readouterr().err


def test_cli_ijb_with_model_aligns_and_pools(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from insightface.utils.face_align import arcface_dst

    from synthface.recognition import create_backbone, save_recognizer

    torch.manual_seed(0)
    save_recognizer(
        create_backbone("tiny", input_size=112, embedding_dim=8).eval(), tmp_path / "m", {}
    )
    rng = np.random.default_rng(0)
    (tmp_path / "loose_crop").mkdir()
    names, rows, lmk_rows = [], [], []
    for t in range(4):
        for k in range(2):
            name = f"{t}_{k}.jpg"
            Image.fromarray(rng.integers(0, 255, (150, 150, 3), dtype=np.uint8)).save(
                tmp_path / "loose_crop" / name
            )
            pts = arcface_dst * 1.2 + rng.uniform(0, 10, 2)
            names.append(name)
            rows.append(f"{name} {t} {t * 10 + k}")
            lmk_rows.append(f"{name} " + " ".join(f"{v:.3f}" for v in pts.ravel()) + " 0.95")
    (tmp_path / "x_face_tid_mid.txt").write_text("\n".join(rows) + "\n")
    (tmp_path / "x_name_5pts_score.txt").write_text("\n".join(lmk_rows) + "\n")
    (tmp_path / "x_template_pair_label.txt").write_text("0 1 1\n0 2 0\n1 3 0\n2 3 1\n")
    base = [
        "eval",
        "ijb",
        "--meta-dir",
        str(tmp_path),
        "--target",
        "x",
        "--model",
        str(tmp_path / "m"),
        "--json",
    ]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["num_pairs"] == 4 and plain["num_templates"] == 4
    assert plain["mode"] == {"flip": True, "norm_score": False, "detector_score": False}
    assert main([*base, "--norm-score", "--detector-score"]) == 0
    weighted = json.loads(capsys.readouterr().out)
    assert weighted["mode"]["norm_score"] and weighted["mode"]["detector_score"]
