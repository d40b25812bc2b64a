"""10-fold verification protocol: hand-computed cases and agreement with a plain reimplementation."""

from __future__ import annotations

import numpy as np
import pytest

from synthface.pipeline.errors import InputError
from synthface.recognition.evaluation import roc
from synthface.recognition.evaluation.verification import (
    INSIGHTFACE_ACC_THRESHOLDS,
    INSIGHTFACE_VAL_THRESHOLDS,
    contiguous_folds,
    evaluate_embeddings,
    evaluate_scores,
    exact_thresholds,
    flip_sum_normalize,
    interp_slinear,
    kfold_accuracy,
    kfold_val_far,
    pair_scores,
)

# ------------------------------------------------------------ straightforward reference
# Written from the protocol description (reference/evaluation.md section 2.1): explicit
# Python loops over folds and thresholds, no shared code with the implementation.


def ref_folds(n, k):
    base, extra = divmod(n, k)
    out, start = [], 0
    for f in range(k):
        size = base + (1 if f < extra else 0)
        test = list(range(start, start + size))
        train = [i for i in range(n) if i < start or i >= start + size]
        out.append((train, test))
        start += size
    return out


def ref_acc(thr, dist, same):
    pred = [d < thr for d in dist]
    return sum(p == s for p, s in zip(pred, same)) / len(dist)


def ref_val_far(thr, dist, same):
    accept = dist < thr
    return np.sum(accept & same) / np.sum(same), np.sum(accept & ~same) / np.sum(~same)


def ref_protocol(dist, same, k=10):
    dist, same = list(dist), [bool(s) for s in same]
    thresholds = [float(t) for t in np.arange(0, 4, 0.01)]
    accs = []
    for train, test in ref_folds(len(dist), k):
        d_tr, s_tr = [dist[i] for i in train], [same[i] for i in train]
        d_te, s_te = [dist[i] for i in test], [same[i] for i in test]
        train_acc = [ref_acc(t, d_tr, s_tr) for t in thresholds]
        best = train_acc.index(max(train_acc))
        accs.append(ref_acc(thresholds[best], d_te, s_te))
    return np.array(accs)


def scipy18_slinear(x, y, v):
    """interp1d(kind="slinear") as scipy <= 1.8 built it: a linear B-spline on knots
    (x0, x..., x_last), duplicates allowed. scipy >= 1.9 raises on the duplicate FARs
    that insightface's calculate_val always produces (scipy issue 21550)."""
    from scipy.interpolate import BSpline

    order = np.argsort(x, kind="mergesort")
    x, y = np.asarray(x)[order], np.asarray(y)[order]
    return float(BSpline(np.r_[x[0], x, x[-1]], y, 1)(v))


def ref_val(dist, same, far_target=1e-3, k=10):
    thresholds = np.arange(0, 4, 0.001)
    vals, fars = [], []
    for train, test in ref_folds(len(dist), k):
        d_tr, s_tr = dist[train], same[train]
        far_train = np.array([ref_val_far(t, d_tr, s_tr)[1] for t in thresholds])
        if far_train.max() >= far_target:
            thr = scipy18_slinear(far_train, thresholds, far_target)
        else:
            thr = 0.0
        v, f = ref_val_far(thr, dist[test], same[test])
        vals.append(v)
        fars.append(f)
    return np.array(vals), np.array(fars)


def random_pairs(rng, n_pairs, dim=16, noise=1.0):
    """Unit embeddings whose genuine pairs are noisy copies: accuracy well inside (0.5, 1)."""
    same = rng.random(n_pairs) < 0.5
    a = rng.normal(size=(n_pairs, dim))
    b = np.where(same[:, None], a + noise * rng.normal(size=a.shape), rng.normal(size=a.shape))
    emb = np.empty((2 * n_pairs, dim))
    emb[0::2], emb[1::2] = a, b
    return emb, same


# ------------------------------------------------------------ folds


def test_contiguous_folds_match_sklearn_kfold_layout():
    # sklearn KFold(10) on 23 samples: first 3 folds have 3 samples, the rest 2.
    folds = contiguous_folds(23, 10)
    assert [hi - lo for lo, hi in folds] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert folds[0] == (0, 3) and folds[-1] == (21, 23)
    assert contiguous_folds(6000, 10)[3] == (1800, 2400)
    with pytest.raises(InputError):
        contiguous_folds(5, 10)


# ------------------------------------------------------------ hand-computed


def test_hand_computed_two_folds():
    # Fold 0 = pairs 0..3, fold 1 = pairs 4..7 (k=2).
    dist = np.array([0.10, 0.50, 1.20, 1.80, 0.30, 1.00, 0.90, 2.00])
    same = np.array([1, 1, 0, 0, 1, 0, 1, 0], bool)
    thresholds = np.array([0.2, 0.6, 1.1, 1.5])
    acc, best, _, _ = kfold_accuracy(dist, same, thresholds, nfolds=2)
    # Train on fold 1 (0.30 S, 1.00 D, 0.90 S, 2.00 D): t=0.2 -> 2/4, 0.6 -> 3/4,
    # 1.1 -> 3/4 (0.9 S ok, 1.0 D wrong) ... first best is 0.6? no: t=1.1 accepts 0.3,1.0,0.9
    # -> correct 0.3,0.9,2.0 = 3/4; t=0.6 accepts 0.3 -> correct 0.3,1.0,2.0 = 3/4.
    # t=1.5 -> same as 1.1 = 3/4. First argmax = 0.6. Apply to fold 0: accept 0.1,0.5 -> 4/4.
    assert best[0] == pytest.approx(0.6)
    assert acc[0] == pytest.approx(1.0)
    # Train on fold 0 (0.1 S, 0.5 S, 1.2 D, 1.8 D): 0.6, 1.1 both 4/4 -> first = 0.6.
    # Fold 1 at 0.6: accept 0.3 (S ok); 1.0 D ok; 0.9 S missed; 2.0 D ok -> 3/4.
    assert best[1] == pytest.approx(0.6)
    assert acc[1] == pytest.approx(0.75)


def test_threshold_is_strict_less_than():
    dist = np.array([0.5, 0.5, 0.7, 0.7])
    same = np.array([1, 1, 0, 0], bool)
    acc, best, _, _ = kfold_accuracy(dist, same, np.array([0.5, 0.6, 0.7]), nfolds=1)
    # dist < 0.5 accepts nothing (0.5 acc); 0.6 perfect; 0.7 still perfect -> first best 0.6
    assert best[0] == pytest.approx(0.6) and acc[0] == 1.0


def test_flip_sum_then_normalise():
    raw = np.array([[3.0, 0.0], [0.0, 2.0]])
    flipped = np.array([[1.0, 0.0], [0.0, 2.0]])
    out = flip_sum_normalize(raw, flipped)
    np.testing.assert_allclose(out, [[1, 0], [0, 1]])
    # summing raw (not normalised) features: a long feature dominates
    out = flip_sum_normalize(np.array([[10.0, 0.0]]), np.array([[0.0, 1.0]]))
    np.testing.assert_allclose(out, [[10 / np.sqrt(101), 1 / np.sqrt(101)]])


def test_pair_scores_euclidean_and_cosine():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = pair_scores(emb, [0, 0], [1, 2], "euclidean_sq")
    np.testing.assert_allclose(d, [2.0, 1.0])
    c = pair_scores(emb, [0, 0], [1, 2], "cosine")
    np.testing.assert_allclose(c, [0.0, 1 / np.sqrt(2)])
    with pytest.raises(InputError, match="outside embeddings rows"):
        pair_scores(emb, [0], [3])


def test_exact_thresholds_split_every_gap():
    t = exact_thresholds([0.2, 0.1, 0.2, 0.5])
    np.testing.assert_allclose(t[:3], [0.1, 0.15, 0.35])
    assert t[-1] > 0.5 and (np.array([0.1, 0.2, 0.5]) < t[-1]).all()


# ------------------------------------------------------------ agreement with the reference


@pytest.mark.parametrize("seed,n_pairs", [(0, 300), (1, 257)])
def test_accuracy_matches_plain_reference(seed, n_pairs):
    rng = np.random.default_rng(seed)
    emb, same = random_pairs(rng, n_pairs)
    res = evaluate_embeddings(emb, same)
    emb_n = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = ((emb_n[0::2] - emb_n[1::2]) ** 2).sum(1)
    expected = ref_protocol(dist, same)
    np.testing.assert_array_equal(np.array(res.fold_accuracies), expected)
    assert res.accuracy == pytest.approx(expected.mean(), abs=0)
    assert res.accuracy_std == pytest.approx(expected.std(), abs=1e-15)
    assert 0.6 < res.accuracy < 0.99  # the case is informative, not trivially perfect


def test_val_far_matches_reference_with_scipy_interp():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(3)
    emb, same = random_pairs(rng, 2000, noise=0.8)
    emb_n = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = ((emb_n[0::2] - emb_n[1::2]) ** 2).sum(1)
    val, far, _ = kfold_val_far(dist, same, INSIGHTFACE_VAL_THRESHOLDS, 1e-2)
    ref_v, ref_f = ref_val(dist, same, 1e-2)
    np.testing.assert_allclose(val, ref_v, atol=1e-12)
    np.testing.assert_allclose(far, ref_f, atol=1e-12)


def test_interp_slinear_matches_scipy_with_repeats():
    interpolate = pytest.importorskip("scipy.interpolate")
    x = np.array([0, 0, 0, 0.001, 0.001, 0.002, 0.004, 0.004])
    y = np.arange(x.size, dtype=float) * 0.01
    for target in [0.0, 0.0005, 0.001, 0.0015, 0.003, 0.0039]:
        want = scipy18_slinear(x, y, target)
        assert interp_slinear(x, y, target) == pytest.approx(want, abs=1e-15), target
    # without repeats, today's interp1d agrees too
    xs = np.array([0.0, 0.1, 0.3, 0.7])
    ys = np.array([1.0, 2.0, 0.5, 4.0])
    for target in [0.0, 0.05, 0.3, 0.5, 0.7]:
        want = float(interpolate.interp1d(xs, ys, kind="slinear")(target))
        assert interp_slinear(xs, ys, target) == pytest.approx(want, abs=1e-15)


def test_cosine_variant_exact_sweep_matches_bruteforce():
    rng = np.random.default_rng(5)
    emb, same = random_pairs(rng, 200)
    res = evaluate_embeddings(emb, same, metric="cosine")
    emb_n = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = (emb_n[0::2] * emb_n[1::2]).sum(1)
    accs = []
    u = np.unique(cos)
    cands = np.r_[u[0] - 1.0, (u[:-1] + u[1:]) / 2, u[-1]]  # every split, midpoints
    for train, test in ref_folds(200, 10):
        tr = np.array([np.mean((cos[train] > t) == same[train]) for t in cands])
        best = cands[np.flatnonzero(tr == tr.max())[-1]]  # ties: strictest threshold
        accs.append(np.mean((cos[test] > best) == same[test]))
    np.testing.assert_allclose(res.fold_accuracies, accs)


def test_grid_and_counts_tpr_fpr_shapes():
    rng = np.random.default_rng(9)
    _, same = random_pairs(rng, 100)
    dist = rng.random(100) * 4
    _, _, tpr, fpr = kfold_accuracy(dist, same, INSIGHTFACE_ACC_THRESHOLDS)
    assert tpr.shape == fpr.shape == (400,)
    assert tpr[0] == 0 and fpr[0] == 0 and np.all(np.diff(tpr) >= 0)


# ------------------------------------------------------------ ROC helpers


def ref_roc_points(labels, scores):
    """All (fpr, tpr) for accept-if-score>=t over distinct t, high to low, plus (0, 0)."""
    labels = np.asarray(labels, bool)
    pts = [(0.0, 0.0)]
    for t in sorted(set(scores.tolist()), reverse=True):
        acc = scores >= t
        pts.append((np.mean(acc[~labels]), np.mean(acc[labels])))
    return np.array(pts)


def test_roc_auc_eer_fnmr_against_reference():
    rng = np.random.default_rng(11)
    labels = rng.random(400) < 0.4
    scores = np.round(rng.normal(size=400) + 1.5 * labels, 1)  # many ties
    pts = ref_roc_points(labels, scores)
    # AUC = P(score_g > score_i) + 0.5 P(tie)
    g, i = scores[labels], scores[~labels]
    want_auc = np.mean(g[:, None] > i[None, :]) + 0.5 * np.mean(g[:, None] == i[None, :])
    assert roc.auc(labels, scores) == pytest.approx(want_auc, abs=1e-12)
    full = roc.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(np.c_[full.fpr, full.tpr], pts)
    fnmr, _ = roc.fnmr_at_fmr(labels, scores, 0.01)
    ok = pts[:, 0] <= 0.01
    assert fnmr == pytest.approx(1 - pts[ok, 1].max())
    e = roc.eer(labels, scores)
    assert 0.0 < e < 0.5


def test_tar_at_far_reads_nearest_point():
    # 4 impostors, 4 genuine. Thresholds give FPR steps of 0.25.
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.7, 0.35, 0.2, 0.1])
    # curve: (0,0) (0,.5) (.25,.5) (.25,.75) (.5,.75) (.5,1) (1,1) (after thinning)
    out = roc.tar_at_far(labels, scores, [0.1, 0.2, 0.3, 0.6])
    assert out[0.1] == 0.5  # nearest FPR 0 -> largest TPR at FPR 0
    assert out[0.2] == 0.75  # nearest FPR 0.25 -> largest TPR there
    assert out[0.3] == 0.75
    assert out[0.6] == 1.0  # FPR .5


def test_evaluate_scores_rejects_bad_input():
    with pytest.raises(InputError, match="non-finite"):
        evaluate_scores([0.1, np.nan], [True, False], nfolds=1)
    with pytest.raises(InputError, match="genuine and impostor"):
        evaluate_scores([0.1, 0.2], [True, True], nfolds=1)
    with pytest.raises(InputError, match="2 scores but 3 labels"):
        evaluate_scores([0.1, 0.2], [True, False, True])
