"""Training options (objectives) and SDD-FIQA quality: DDL, EKD, AFA/PGD, pseudo-labels, QC.

Tiny and on CPU: a 12-identity procedural world at 32 px, a few training steps each.
The options' own losses must fall, their defining properties must hold, and the
loop's extension point must carry them without any of them being named in the loop.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthface.pipeline.config import validate_config
from synthface.pipeline.errors import ConfigError, InputError, ShardError
from synthface.recognition.config import DDLConfig, EKDConfig, HardRule, TrainConfig
from synthface.recognition.training import train
from synthface.recognition.training.ddl import (
    HardSampleFlag,
    ddl_loss,
    kl_divergence,
    soft_histogram,
)
from synthface.recognition.training.ekd import anchor_thresholds, ekd_loss, pair_similarities

REPO = Path(__file__).resolve().parents[1]
DEMO_RECOGNIZER = REPO / "data/demo/models/recognizer/model"
SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from synthface.pipeline.world import make_world_dataset

    root = tmp_path_factory.mktemp("options")
    make_world_dataset(root / "world", identities=12, per_identity=8, size=SIZE, seed=0)
    return root / "world"


def _cfg(world: Path, out: Path, steps: int = 12, **sections) -> TrainConfig:
    data = {
        "data": {"train": str(world), "batch_size": 32, "num_workers": 0,
                 "sampler": {"kind": "balanced", "per_identity": 4}},
        "model": {"backbone": "tiny", "input_size": SIZE, "embedding_dim": 32},
        "head": {"name": "arcface", "params": {"scale": 16, "margin": 0.2}},
        "optim": {"lr": 0.05},
        "schedule": {"kind": "constant"},
        "train": {"output_dir": str(out), "max_steps": steps, "device": "cpu"},
        "checkpoint": {"every_steps": 0},
        "logging": {"every_steps": 3, "progress": False},
    }  # fmt: skip
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return validate_config(data, TrainConfig)


def _column(path: Path, name: str) -> list[float]:
    with open(path / "metrics.csv", newline="") as fh:
        return [float(r[name]) for r in csv.DictReader(fh)]


def _falls(values: list[float]) -> bool:
    """The last third's mean is below the first third's (steps are noisy)."""
    k = max(1, len(values) // 3)
    return np.mean(values[-k:]) < np.mean(values[:k])


# ------------------------------------------------------------------ DDL


def test_ddl_histograms_sum_to_one_and_kl_is_zero_for_identical_branches():
    points = torch.arange(1000) / 1000
    for values in (torch.tensor([0.2]), torch.rand(50), torch.tensor([-0.3, 0.99, 1.4])):
        hist = soft_histogram(values, points, 0.1)
        assert hist.shape == (1000,) and float(hist.sum()) == pytest.approx(1.0, abs=1e-5)
        assert (hist >= 0).all()
    p = soft_histogram(torch.rand(40), points, 0.1)
    assert float(kl_divergence(p, p)) == pytest.approx(0.0, abs=1e-7)
    # identical branches: the hard half is the easy half in an orthogonal subspace, so
    # every within-branch similarity repeats and cross-branch ones (0) never win
    torch.manual_seed(0)
    easy = torch.nn.functional.normalize(torch.randn(8, 16) + 1.5, dim=1)  # all cos > 0
    emb = torch.cat(
        [torch.cat([easy, torch.zeros(8, 16)], 1), torch.cat([torch.zeros(8, 16), easy], 1)]
    )
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7])
    hard = torch.tensor([False] * 8 + [True] * 8)
    cfg = DDLConfig(hard=HardRule(kind="yaw"))
    terms = ddl_loss(emb, labels, hard, cfg)
    assert torch.allclose(terms.easy.pos.sort().values, terms.hard.pos.sort().values)
    assert torch.allclose(terms.easy.neg.sort().values, terms.hard.neg.sort().values)
    assert float(terms.pos_kl) == pytest.approx(0.0, abs=1e-6)
    assert float(terms.neg_kl) == pytest.approx(0.0, abs=1e-6)
    # a hard branch whose positives are worse: positive KL > 0, gradient reaches it
    worse = emb.clone()
    worse[8:, 16:] += 0.8 * torch.randn(8, 16)
    worse.requires_grad_(True)
    terms = ddl_loss(worse, labels, hard, cfg)
    assert float(terms.pos_kl.detach()) > 1e-3
    terms.total.backward()
    assert worse.grad[8:].abs().sum() > 0


def test_ddl_hard_rules_read_metadata_lists_and_scores(tmp_path):
    s = {"__key__": "00000003/0001", "meta": {"attributes": {"yaw": -41.0, "blur": 0.2},
                                               "qc": {"quality": 12.0}}}  # fmt: skip
    assert HardSampleFlag(HardRule(kind="yaw"))(s) == 1.0  # |yaw| >= 30
    assert HardSampleFlag(HardRule(kind="blur"))(s) == 0.0  # 0.2 < 0.8
    assert HardSampleFlag(HardRule(kind="quality", threshold=20))(s) == 1.0
    listed = tmp_path / "hard.txt"
    listed.write_text("00000003/0001\n00000004/0000\n")
    assert HardSampleFlag(HardRule(kind="list", file=str(listed)))(s) == 1.0
    assert (
        HardSampleFlag(HardRule(kind="list", file=str(listed)))({"__key__": "00000003/0002"}) == 0
    )
    np.save(tmp_path / "q.npy", np.array([50.0, 5.0], np.float32))
    (tmp_path / "q.keys.txt").write_text("00000003/0000\n00000003/0001\n")
    flag = HardSampleFlag(HardRule(kind="quality", threshold=20, file=str(tmp_path / "q.npy")))
    assert flag(s) == 1.0 and flag({"__key__": "00000003/0000"}) == 0.0
    with pytest.raises(ShardError, match=r"meta.attributes.yaw"):
        HardSampleFlag(HardRule(kind="yaw"))({"__key__": "00000000/0000", "meta": {}})
    with pytest.raises(ShardError, match=r"no row for sample '00000009/0000'"):
        flag({"__key__": "00000009/0000"})
    with pytest.raises(ConfigError, match=r"needs file"):
        validate_config({"kind": "list"}, HardRule)
    with pytest.raises(ConfigError, match=r"sampler.kind: balanced"):
        validate_config({"data": {"train": "x"}, "ddl": {"hard": {"kind": "yaw"}}}, TrainConfig)


def test_ddl_trains_and_lowers_its_loss(world, tmp_path):
    cfg = _cfg(world, tmp_path / "ddl", steps=12, ddl={"hard": {"kind": "yaw", "threshold": 20}})
    result = train(cfg)
    assert result.completed
    ddl = _column(tmp_path / "ddl", "loss_ddl")
    head = _column(tmp_path / "ddl", "loss_head")
    total = _column(tmp_path / "ddl", "loss")
    assert all(t == pytest.approx(h + d, abs=1e-4) for t, h, d in zip(total, head, ddl))
    assert _falls(ddl), ddl


# ------------------------------------------------------------------ EKD


def test_ekd_loss_is_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    emb = torch.randn(24, 16)
    labels = torch.arange(24) // 4
    cfg = EKDConfig(teacher="unused")
    sims = pair_similarities(emb, labels)
    fprs = torch.tensor(cfg.fpr_anchors, dtype=torch.float64)
    thr = anchor_thresholds(sims[1], fprs)
    assert (thr[:-1] <= thr[1:]).all()  # lower FPR, higher threshold
    assert float(ekd_loss(sims, sims, thr, thr, cfg)) == 0.0
    other = pair_similarities(emb + 0.5 * torch.randn(24, 16), labels)
    assert float(ekd_loss(other, sims, anchor_thresholds(other[1], fprs), thr, cfg)) > 0


def test_ekd_trains_from_a_cached_teacher_and_lowers_its_loss(world, tmp_path):
    from synthface.recognition.training.fields import KeyedArray

    cache = tmp_path / "teacher" / "emb.npy"
    cfg = _cfg(world, tmp_path / "ekd", steps=12,
               ekd={"teacher": str(DEMO_RECOGNIZER), "cache": str(cache)})  # fmt: skip
    train(cfg)
    values = _column(tmp_path / "ekd", "loss_ekd")
    assert _falls(values), values
    # computed once, keyed by sample, with its provenance; reused by the next run
    table = KeyedArray(cache, field="ekd.cache")
    assert len(table) == 96 and table({"__key__": "00000011/0007"}).shape == (128,)
    source = json.loads(cache.with_suffix(".source.json").read_text())
    assert source["count"] == 96 and source["flip"] is True
    mtime = cache.stat().st_mtime_ns
    train(_cfg(world, tmp_path / "ekd2", steps=2,
               ekd={"teacher": str(DEMO_RECOGNIZER), "cache": str(cache)}))  # fmt: skip
    assert cache.stat().st_mtime_ns == mtime
    # a cache of another teacher is refused, not silently used
    source["teacher_sha256"] = "0" * 64
    cache.with_suffix(".source.json").write_text(json.dumps(source))
    with pytest.raises(InputError, match=r"another teacher_sha256"):
        train(_cfg(world, tmp_path / "ekd3", steps=1,
                   ekd={"teacher": str(DEMO_RECOGNIZER), "cache": str(cache)}))  # fmt: skip


def test_ekd_teacher_may_be_onnx_or_run_online(world, tmp_path):
    from synthface.recognition.export import export_onnx

    onnx = tmp_path / "teacher.onnx"
    export_onnx(DEMO_RECOGNIZER, onnx, allow_any_size=True)
    cfg = _cfg(world, tmp_path / "run", steps=2, ekd={"teacher": str(onnx)})
    assert train(cfg).completed
    assert (tmp_path / "run" / "teacher" / "embeddings.source.json").is_file()
    online = _cfg(world, tmp_path / "online", steps=2,
                  ekd={"teacher": str(DEMO_RECOGNIZER), "online": True})  # fmt: skip
    assert train(online).completed and not (tmp_path / "online" / "teacher").exists()
    with pytest.raises(ConfigError, match=r"ONNX teacher"):
        train(_cfg(world, tmp_path / "run2", steps=1,
                   ekd={"teacher": str(onnx), "online": True}))  # fmt: skip


# ------------------------------------------------------------------ adversarial / AFA


def test_pgd_stays_in_budget_and_moves_the_embedding():
    from synthface.recognition.attacks import PIXEL, pgd_attack
    from synthface.recognition.backbones import create_backbone

    torch.manual_seed(0)
    net = create_backbone("tiny", input_size=SIZE, embedding_dim=16).eval()
    x = torch.rand(4, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        ref = net(x)
    eps = torch.tensor([0.0, 2.0, 4.0, 8.0])
    adv = pgd_attack(net, x, ref, eps, steps=3)
    delta = (adv - x).abs().amax((1, 2, 3))
    assert torch.all(delta <= eps * PIXEL + 1e-6) and float(delta[0]) == 0.0
    assert adv.min() >= -1 and adv.max() <= 1
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(net(adv), ref)
    assert cos[0] > 0.9999 and cos[3] < cos[1]  # pushed further with a larger budget


def test_afa_fusing_weight_moves_with_attack_strength(world):
    """The layers' estimators, fitted on training batches of random strength (network
    held still), give attacked images a higher fusing weight the stronger the attack."""
    from synthface.pipeline.shards import iter_samples
    from synthface.recognition.attacks import pgd_attack
    from synthface.recognition.training import build_model

    torch.manual_seed(0)
    cfg = _cfg(world, Path("unused"), adversarial={"method": "afa", "steps": 2,
                                                    "fuse_momentum": 0.3})  # fmt: skip
    model = build_model(cfg, 12).train()
    samples = list(iter_samples(world))
    x = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2)
    x = x.float() / 127.5 - 1
    labels = torch.tensor([s["label"] for s in samples])
    errors = []
    for _ in range(5):
        rows = torch.randperm(len(x))[:24]
        errors.append(float(model(x[rows], labels[rows]).metrics["fuse_error"]))
    assert errors[-1] < errors[0]
    backbone = model.backbone.eval()
    probe = x[:24]
    with torch.no_grad():
        ref = backbone(probe)
    w = [
        float(backbone.fusing_weight(pgd_attack(backbone, probe, ref, e, steps=3)).mean())
        for e in (0.0, 4.0, 8.0)
    ]
    assert w[0] < w[1] < w[2], w


def test_afa_estimators_cannot_read_which_branch_earlier_layers_took():
    """Fitted on the training forward (mixing by the given weights), a layer's estimator
    learns which BatchNorm its predecessors used, a shortcut absent at test time. Fitted on
    the test-time path, the same images with targets 0 and 1 get the targets' mean, and
    the training forward itself fits nothing."""
    from synthface.recognition.backbones import create_backbone
    from synthface.recognition.backbones.afa import afa_backbone

    torch.manual_seed(0)
    model = afa_backbone(create_backbone("tiny", input_size=SIZE, embedding_dim=32))
    with torch.no_grad():
        for m in model.duals:  # an adversarial branch unlike the clean one, as after training
            m.adv.weight.mul_(3.0)
            m.adv.bias.add_(0.5)
    x = torch.randn(8, 3, SIZE, SIZE).repeat(2, 1, 1, 1)  # the same images twice
    target = torch.cat([torch.zeros(8), torch.ones(8)])
    model.train()
    model(x, fuse=target, clean_rows=8)  # a training forward
    assert not any(bool(m.fitted) for m in model.duals)
    for _ in range(3):
        model.fit_estimators(x, target)
    # mixing by the targets would make later layers' features differ between the halves
    # and the regression would learn them apart; on the test-time path it cannot
    w = model.fusing_weight(x)
    torch.testing.assert_close(w, torch.full_like(w, 0.5), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("method", "steps"), [("afa", 12), ("pgd", 3)])
def test_adversarial_training_lowers_its_adversarial_loss_and_exports(
    world, tmp_path, method, steps
):
    from synthface.recognition.checkpoint import load_recognizer
    from synthface.recognition.embedder import load_embedder

    cfg = _cfg(world, tmp_path / method, steps=steps,
               adversarial={"method": method, "steps": 1})  # fmt: skip
    result = train(cfg)
    adv = _column(tmp_path / method, "adv_head")
    assert method == "pgd" or _falls(adv), adv  # pgd: the same loop, a smoke run
    model = load_recognizer(result.model_dir)
    assert (model.spec["name"] == "afa") == (method == "afa")
    images = np.stack(
        [np.zeros((SIZE, SIZE, 3), np.uint8), np.full((SIZE, SIZE, 3), 200, np.uint8)]
    )
    emb = load_embedder(result.model_dir).embed(images)
    assert emb.shape == (2, 32) and np.isfinite(emb).all()
    if method == "afa":
        assert 0 <= float(model.fusing_weight(torch.zeros(2, 3, SIZE, SIZE)).max()) <= 1
        with pytest.raises(InputError, match=r"different adversarial"):
            _resume_with(cfg, {"method": "pgd", "steps": 1})


def _resume_with(cfg: TrainConfig, adversarial: dict):
    other = cfg.model_copy(deep=True)
    other.adversarial = validate_config(adversarial, type(cfg.adversarial))
    other.train.max_steps = cfg.train.max_steps + 1
    return train(other, resume="latest")


# ------------------------------------------------------------------ SDD-FIQA quality


def test_wasserstein_and_pseudo_labels_basics():
    from synthface.recognition.quality.pseudo_labels import pseudo_labels, wasserstein_1d

    a, b = np.array([[0.1, 0.5, 0.9]]), np.array([[0.0, 0.4, 0.8]])
    assert wasserstein_1d(a, b) == pytest.approx([0.1])
    assert wasserstein_1d(a[:, ::-1], b) == pytest.approx([0.1])  # order-free
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.repeat(np.arange(8), 5)
    q = pseudo_labels(emb, labels, repeats=3)
    assert q.shape == (40,) and q.min() >= 0 and q.max() <= 100
    assert np.array_equal(q, pseudo_labels(emb, labels, repeats=3))  # seeded
    with pytest.raises(InputError, match=r"two identities"):
        pseudo_labels(emb, np.zeros(40, int))


def test_pseudo_labels_rank_a_blurred_copy_below_its_original(world):
    """Under a trained recognizer (the shipped demo one, 32 px), a heavily blurred copy
    of each identity's best image scores below that image."""
    from PIL import Image, ImageFilter

    from synthface.pipeline.shards import iter_samples
    from synthface.recognition.embedder import load_embedder
    from synthface.recognition.quality.pseudo_labels import pseudo_labels

    samples = list(iter_samples(world))
    images = np.stack([s["image"] for s in samples])
    labels = np.array([s["label"] for s in samples])
    embedder = load_embedder(DEMO_RECOGNIZER)
    emb = embedder.embed(images)
    q0 = pseudo_labels(emb, labels)
    best = np.array([np.flatnonzero(labels == c)[np.argmax(q0[labels == c])] for c in range(12)])
    blurred = np.stack([
        np.asarray(Image.fromarray(images[i]).filter(ImageFilter.GaussianBlur(3))) for i in best
    ])  # fmt: skip
    q = pseudo_labels(
        np.concatenate([emb, embedder.embed(blurred)]), np.concatenate([labels, labels[best]])
    )
    assert np.all(q[len(images) :] < q[best]), (q[best], q[len(images) :])


def test_quality_regressor_trains_scores_and_feeds_qc(world, tmp_path):
    from synthface.recognition.quality import QualityScorer, label_dataset, train_quality
    from synthface.recognition.quality.config import QualityTrainConfig

    labels = tmp_path / "labels.npy"
    info = label_dataset(world, DEMO_RECOGNIZER, labels, repeats=4)
    assert info["count"] == 96 and labels.with_suffix(".keys.txt").is_file()
    cfg = validate_config({
        "data": {"train": str(world), "labels": str(labels), "batch_size": 32,
                 "num_workers": 0, "shuffle_buffer": 200},
        "model": {"backbone": "tiny", "input_size": SIZE, "init": str(DEMO_RECOGNIZER)},
        "optim": {"name": "adamw", "lr": 3e-3},
        "schedule": {"kind": "constant"},
        "train": {"output_dir": str(tmp_path / "q"), "max_steps": 25, "device": "cpu"},
    }, QualityTrainConfig)  # fmt: skip
    out = train_quality(cfg)
    assert out["last_loss"] < 0.7 * out["first_loss"], out
    scorer = QualityScorer(out["model_dir"])
    img = np.zeros((3, SIZE, SIZE, 3), np.uint8)
    scores = scorer.score(img)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert np.allclose(scores, scorer.score(img))  # evaluation mode: no dropout
    with pytest.raises(ConfigError, match=r"model.init: .* tiny at \[32, 32\]"):
        train_quality(cfg.model_copy(update={"model": cfg.model.model_copy(
            update={"input_size": 48})}))  # fmt: skip


def test_qc_quality_threshold_flags_filters_and_rethresholds():
    from synthface.pipeline.qc import QCConfig, audit, score_identity
    from synthface.pipeline.qc.audit import IdentityTable

    cfg = QCConfig(quality_model="q", min_quality=30.0)
    emb = np.eye(4, 8, dtype=np.float32) + 0.5
    per_sample, summary = score_identity(0, emb, cfg, quality=np.array([80, 20, 50, 10.0]))
    assert [s["quality"] for s in per_sample] == [80, 20, 50, 10]
    assert [("low_quality" in s["flags"]) for s in per_sample] == [False, True, False, True]
    assert summary.quality == pytest.approx(40.0)
    _, summary1 = score_identity(1, -emb, cfg, quality=np.array([90, 90, 90, 90.0]))
    table = IdentityTable(
        num_samples=np.array([4, 4]),
        consistency=np.array([summary.consistency, summary1.consistency], np.float32),
        consistency_min=np.zeros(2, np.float32),
        diversity=np.zeros(2, np.float32),
        anchor_cos=np.full(2, np.nan, np.float32),
        centroids=np.stack([summary.centroid, summary1.centroid]),
        low_consistency={},
        duplicates={},
        quality=np.array([40.0, 90.0], np.float32),
        sample_quality={0: summary.sample_quality, 1: summary1.sample_quality},
    )
    result = audit(table, cfg)
    assert sorted(result.excluded_samples) == ["00000000/0001", "00000000/0003"]
    assert result.summary["flagged_samples"]["low_quality"] == 2
    # stricter, from the same scores: identity 0 keeps one sample and leaves the view
    stricter = audit(table, cfg.model_copy(update={"min_quality": 60.0}))
    assert stricter.summary["flagged_samples"]["low_quality"] == 3
    assert stricter.excluded_identities == {0: ["too_few_samples"]}
    assert stricter.summary["identity_quality"]["max"] == pytest.approx(90.0)
    with pytest.raises(ConfigError, match=r"min_quality needs quality_model"):
        validate_config({"min_quality": 3}, QCConfig)


def test_error_versus_reject_falls_for_an_informative_quality():
    from synthface.recognition.evaluation.erc import error_versus_reject

    rng = np.random.default_rng(0)
    n = 4000
    quality = rng.random(n)
    same = np.arange(n) < n // 2
    # genuine scores worsen as quality drops; impostors do not depend on it
    scores = np.where(same, 0.2 + 0.8 * quality + rng.normal(0, 0.1, n), rng.normal(0, 0.1, n))
    good = error_versus_reject(scores, same, quality, fmr=1e-2)
    rand = error_versus_reject(scores, same, rng.random(n), fmr=1e-2)
    assert good.fnmr[0] == pytest.approx(rand.fnmr[0])  # same threshold, nothing dropped
    assert good.fnmr[-1] < 0.5 * good.fnmr[0] and good.area < rand.area
    assert abs(rand.fnmr[-1] - rand.fnmr[0]) < 0.05
    assert all(a >= b for a, b in zip(good.fnmr, good.fnmr[1:]))


# ------------------------------------------------------------------ the extension point


def test_loop_names_no_option_and_a_new_objective_plugs_in(world, tmp_path, monkeypatch):
    """Options reach the loop only through the objective hooks: a test-only objective
    registered for an existing section gets every hook called."""
    import synthface.recognition.training.objectives as O

    loop = (REPO / "recognition/training/loop.py").read_text()
    for name in ("ddl", "distill", "ekd", "adversarial", "afa"):
        assert name not in loop.lower(), name
    calls: list[str] = []

    class Probe(O.Objective):
        terms = ("probe",)
        metrics = ("probe_metric",)

        @classmethod
        def from_config(cls, cfg, num_classes):
            calls.append("from_config")
            return cls()

        def wrap_backbone(self, backbone):
            calls.append("wrap_backbone")
            return backbone

        def prepare(self, run):
            calls.append("prepare")

        def sample_fields(self):
            return {"probe_index": lambda s: float(int(s["__key__"][-4:]))}

        def transform(self, step):
            assert step.fields["probe_index"].shape == step.labels.shape
            calls.append("transform")
            return step

        def loss_terms(self, step):
            return {"probe": 0.0 * step.embeddings.sum()}

        def step_metrics(self, step):
            return {"probe_metric": step.fields["probe_index"].mean()}

    monkeypatch.setitem(O.OBJECTIVES._entries, "ddl", Probe)
    cfg = _cfg(world, tmp_path / "probe", steps=3, ddl={"hard": {"kind": "yaw"}})
    train(cfg)
    assert calls[:3] == ["from_config", "wrap_backbone", "prepare"] and "transform" in calls
    assert _column(tmp_path / "probe", "loss_probe") == [0.0]
    assert 0 <= _column(tmp_path / "probe", "probe_metric")[0] <= 7


def test_balanced_batches_hold_identities_times_k(world):
    from synthface.recognition.training.sampler import BalancedBatches, batch_layout

    assert batch_layout(64, 4, 0.5) == (8, 32)
    ds = BalancedBatches(world, "train", batch_size=32, per_identity=4, random_fraction=0.25,
                         seed=1, batches_per_worker=2)  # fmt: skip
    samples = list(ds)
    assert len(samples) == 64
    for b in range(2):
        labels = [s["label"] for s in samples[32 * b : 32 * b + 24]]  # 6 identities x 4
        groups = [labels[i : i + 4] for i in range(0, 24, 4)]
        assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == 6
    assert [s["__key__"] for s in samples] == [s["__key__"] for s in list(ds)]  # seeded
    with pytest.raises(ConfigError, match=r"room for 1 identities"):
        batch_layout(8, 4, 0.5)


def test_resume_is_exact_with_balanced_batches_and_objective_state(world, tmp_path):
    from safetensors.torch import load_file

    extra = {"ekd": {"teacher": str(DEMO_RECOGNIZER), "cache": str(tmp_path / "t.npy")},
             "checkpoint": {"every_steps": 4}}  # fmt: skip
    a = train(_cfg(world, tmp_path / "a", steps=8, **extra))
    chunked = _cfg(world, tmp_path / "b", steps=8, **extra)
    train(chunked, stop_after=6)
    b = train(chunked, resume="latest")
    wa = load_file(a.checkpoint / "model.safetensors")
    wb = load_file(b.checkpoint / "model.safetensors")
    assert any("teacher_thresholds" in k for k in wa)  # EKD's EMA thresholds are state
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_options_compose_under_bf16(world, tmp_path):
    """DDL, EKD and AFA at once, in bf16 autocast: the adversarial copy duplicates every
    per-sample field, and every option computes in float32 whatever the autocast."""
    cfg = _cfg(
        world,
        tmp_path / "all",
        steps=2,
        train={"mixed_precision": "bf16"},
        ddl={"hard": {"kind": "blur", "threshold": 0.3}},
        ekd={"teacher": str(DEMO_RECOGNIZER), "cache": str(tmp_path / "t.npy")},
        adversarial={"method": "afa", "steps": 1},
    )
    assert train(cfg).completed
    with open(tmp_path / "all" / "metrics.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    for key in ("loss_head", "loss_ddl", "loss_ekd", "adv_head", "fuse_error"):
        assert np.isfinite(float(row[key])), key


def test_generation_qc_scores_quality_and_filters_by_it(tmp_path):
    """qc.quality_model scores every generated image (sample metadata, identity array,
    report); qc.min_quality filters the view, and a stricter view needs no regeneration."""
    from synthface.generators.dataset import generate_dataset
    from synthface.pipeline.qc import QCConfig
    from synthface.pipeline.qc.refilter import write_filtered_view
    from synthface.pipeline.shards import iter_samples, load_identity_array
    from synthface.recognition.quality import build_quality_model, save_quality_model
    from tests.flows_helpers import make_tiny_models, tiny_config

    make_tiny_models(tmp_path / "models")
    torch.manual_seed(0)
    qmodel = save_quality_model(build_quality_model("tiny", input_size=16), tmp_path / "q", {})
    cfg = tiny_config(tmp_path / "models", tmp_path / "ds",
                      qc={"quality_model": str(qmodel), "min_quality": -1e9})  # fmt: skip
    generate_dataset(cfg)
    ds = tmp_path / "ds"
    quality = {s["__key__"]: s["meta"]["qc"]["quality"] for s in iter_samples(ds, decode=False)}
    assert len(quality) == 18 and len(set(quality.values())) > 1
    assert load_identity_array(ds, "qc_quality").shape == (6,)
    assert (ds / "report" / "quality.png").is_file()
    assert "face image quality" in (ds / "report" / "report.md").read_text()
    cut = float(np.median(list(quality.values())))
    strict = cfg.qc.model_copy(update={"min_quality": cut, "view": "q"})
    view = write_filtered_view(ds, QCConfig.model_validate(strict.model_dump()))
    low = {k for k, q in quality.items() if q < cut}
    left_out = set(view["excluded_samples"]) | {
        k for k in quality if k[:8] in {f"{int(i):08d}" for i in view["excluded_identities"]}
    }
    assert low and low <= left_out
