"""Quality and privacy control: per-identity scores, separation, leakage, views, report."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.pipeline.errors import InputError
from synthface.pipeline.qc import (
    FLAG_BITS,
    IdentityTable,
    QCConfig,
    audit,
    gallery_similarity,
    gather_identity_table,
    l2_normalize,
    load_gallery,
    load_view,
    nearest_other,
    score_identity,
    write_shard_qc,
    write_view,
)


def _cluster(rng, center, n, noise):
    return l2_normalize(center[None] + noise * rng.standard_normal((n, center.shape[0])))


def test_score_identity_consistency_duplicates_and_low_samples():
    rng = np.random.default_rng(0)
    center = l2_normalize(rng.standard_normal(64))
    emb = _cluster(rng, center, 5, 0.1)
    emb[3] = emb[1]  # exact duplicate of sample 1
    emb[4] = l2_normalize(rng.standard_normal(64))  # an outlier: not this identity
    cfg = QCConfig(min_sample_consistency=0.5, duplicate_similarity=0.99)
    per_sample, summary = score_identity(7, emb, cfg, anchor=center)

    assert per_sample[3]["duplicate_of"] == 1 and "duplicate" in per_sample[3]["flags"]
    assert "duplicate_of" not in per_sample[1]
    assert summary.duplicates == [3]
    assert summary.low_consistency == [4] and per_sample[4]["flags"] == ["low_consistency"]
    # The centroid of the inliers is close to the true centre, the outlier is not.
    assert per_sample[0]["centroid_cos"] > 0.7 > 0.5 > per_sample[4]["centroid_cos"]
    assert per_sample[0]["anchor_cos"] > 0.7
    assert summary.consistency == pytest.approx(
        np.mean([p["centroid_cos"] for p in per_sample]), abs=1e-5
    )


def test_diversity_is_zero_for_identical_images_and_grows_with_spread():
    rng = np.random.default_rng(1)
    center = l2_normalize(rng.standard_normal(32))
    cfg = QCConfig()
    _, same = score_identity(0, np.repeat(center[None], 4, axis=0), cfg)
    _, tight = score_identity(0, _cluster(rng, center, 6, 0.05), cfg)
    _, loose = score_identity(0, _cluster(rng, center, 6, 0.5), cfg)
    assert same.diversity == pytest.approx(0.0, abs=1e-5)
    assert same.duplicates == [1, 2, 3]  # all duplicates of the first, none of each other
    assert 0 < tight.diversity < loose.diversity


def test_score_identity_rejects_nan():
    with pytest.raises(InputError, match="identity 3: embeddings contain NaN"):
        score_identity(3, np.array([[np.nan, 1.0]]), QCConfig())


def test_nearest_other_blockwise_equals_brute_force():
    rng = np.random.default_rng(2)
    c = l2_normalize(rng.standard_normal((37, 8)))
    full = c @ c.T
    np.fill_diagonal(full, -np.inf)
    sim, idx = nearest_other(c, block=5)
    np.testing.assert_array_equal(idx, full.argmax(1))
    np.testing.assert_allclose(sim, full.max(1), atol=1e-6)


def _table(centroids, counts=None, duplicates=None):
    n = centroids.shape[0]
    return IdentityTable(
        num_samples=np.array(counts or [4] * n),
        consistency=np.full(n, 0.9, np.float32),
        consistency_min=np.full(n, 0.8, np.float32),
        diversity=np.full(n, 0.2, np.float32),
        anchor_cos=np.full(n, np.nan, np.float32),
        centroids=l2_normalize(centroids),
        low_consistency={},
        duplicates=duplicates or {},
    )


def test_leakage_audit_flags_and_drops_identity_close_to_a_real_one(tmp_path):
    rng = np.random.default_rng(3)
    centroids = l2_normalize(rng.standard_normal((6, 64)))
    real = l2_normalize(rng.standard_normal((50, 64)))
    real[17] = l2_normalize(centroids[4] + 0.05 * rng.standard_normal(64))  # a leaked identity
    gpath = tmp_path / "gallery.npy"
    np.save(gpath, real)
    gallery = load_gallery(gpath, 64)
    sim, idx = gallery_similarity(centroids, gallery, block=7)
    assert idx[4] == 17 and sim[4] > 0.9 and np.delete(sim, 4).max() < 0.6

    dropped = audit(_table(centroids), QCConfig(max_gallery_similarity=0.6), gallery=gallery)
    assert dropped.identity_flags == {4: ["leak"]}
    assert dropped.excluded_identities == {4: ["leak"]}
    assert dropped.arrays["qc_flags"][4] == FLAG_BITS["leak"]
    assert dropped.arrays["qc_gallery_index"][4] == 17

    flagged = audit(_table(centroids), QCConfig(leakage_action="flag"), gallery=gallery)
    assert flagged.identity_flags == {4: ["leak"]} and flagged.excluded_identities == {}


def test_gallery_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"missing\.npy: gallery embeddings file not found"):
        load_gallery(tmp_path / "missing.npy", 8)
    path = tmp_path / "g.npy"
    np.save(path, np.zeros((3, 16), np.float32))
    with pytest.raises(
        InputError, match=r"g\.npy: gallery embeddings have 16 dims but the QC recognizer gives 8"
    ):
        load_gallery(path, 8)


def test_separation_and_too_few_samples_after_duplicate_drop():
    rng = np.random.default_rng(4)
    c = l2_normalize(rng.standard_normal((4, 32)))
    c[1] = l2_normalize(c[0] + 0.01 * rng.standard_normal(32))  # twins
    table = _table(c, counts=[4, 4, 4, 2], duplicates={3: [1]})
    res = audit(table, QCConfig(max_neighbour_similarity=0.9, min_samples=2))
    assert res.identity_flags[0] == ["not_separated"] and res.identity_flags[1] == ["not_separated"]
    assert res.identity_flags[3] == ["too_few_samples"]
    # Only too_few_samples (and leak) drop identities by default; twins are flagged, kept.
    assert res.excluded_identities == {3: ["too_few_samples"]}
    assert res.excluded_samples == {}  # its duplicate goes with the identity
    assert res.summary["flagged_identities"]["not_separated"] == 2


def test_sidecars_round_trip_and_detect_corruption(tmp_path):
    rng = np.random.default_rng(5)
    cfg = QCConfig()
    scores = [score_identity(i, rng.standard_normal((3, 8)), cfg)[1] for i in range(2, 5)]
    write_shard_qc(tmp_path, "train", 1, scores)
    table = gather_identity_table(tmp_path, "train", [(1, 2, 4)])
    np.testing.assert_allclose(table.centroids, np.stack([s.centroid for s in scores]))
    with pytest.raises(Exception, match=r"do not match the shard.s 2\.\.5"):
        gather_identity_table(tmp_path, "train", [(1, 2, 5)])
    npy = tmp_path / "qc" / "train-000001.npy"
    npy.write_bytes(npy.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(Exception, match="QC sidecar missing or corrupt"):
        gather_identity_table(tmp_path, "train", [(1, 2, 4)])


def test_view_keeps_and_relabels(tmp_path):
    view = write_view(
        tmp_path,
        "strict",
        split="train",
        config_hash="abc",
        num_identities=4,
        identity_counts=[3, 3, 3, 3],
        excluded_identities={1: ["leak"]},
        excluded_samples={"00000002/0001": ["duplicate"]},
        criteria={},
    )
    assert view["num_identities"] == 3 and view["num_samples"] == 12 - 3 - 1
    loaded = load_view(tmp_path, "strict")
    assert not loaded.keep("00000001/0000")
    assert not loaded.keep("00000002/0001") and loaded.keep("00000002/0000")
    assert [loaded.label(i) for i in (0, 2, 3)] == [0, 1, 2]
    with pytest.raises(InputError, match="no such view"):
        load_view(tmp_path, "other")


def test_report_from_a_scored_dataset_is_deterministic(tmp_path):
    from PIL import Image

    from synthface.pipeline.report import write_report
    from synthface.pipeline.shards import (
        Sample,
        begin_dataset,
        encode_image,
        finalize_dataset,
        write_shard,
    )

    rng = np.random.default_rng(6)
    cfg = QCConfig()
    begin_dataset(tmp_path, config={"t": 1})
    scores = []
    samples = []
    for identity in range(5):
        emb = _cluster(rng, l2_normalize(rng.standard_normal(16)), 4, 0.3)
        per_sample, summary = score_identity(identity, emb, cfg)
        scores.append(summary)
        for j in range(4):
            img = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            samples.append(Sample(identity, j, encode_image(img), meta={"qc": per_sample[j]}))
    write_shard_qc(tmp_path, "train", 0, scores)
    write_shard(tmp_path, 0, samples)
    res = audit(gather_identity_table(tmp_path, "train", [(0, 0, 4)]), cfg)
    finalize_dataset(
        tmp_path, config={"t": 1}, identity_arrays=res.arrays, extra={"qc": res.summary}
    )
    paths = write_report(tmp_path, contact_identities=3, contact_samples=2)
    first = {k: p.read_bytes() for k, p in paths.items()}
    text = first["markdown"].decode()
    assert "5 identities, 20 samples" in text and "contact_sheet.png" in text
    sheet = Image.open(paths["contact_sheet"])
    assert sheet.size[1] > sheet.size[0] * 0.5  # 3 rows x 2 columns
    write_report(tmp_path, contact_identities=3, contact_samples=2)
    assert {k: p.read_bytes() for k, p in paths.items()} == first
