"""FRCSyn: rules, thresholds from training-side data, metrics, packaging and validation."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from synthface.pipeline.cli import main
from synthface.pipeline.errors import InputError
from synthface.recognition.frcsyn import metrics as fm
from synthface.recognition.frcsyn.comparisons import read_comparisons
from synthface.recognition.frcsyn.package import (
    package_run,
    validate_package,
    write_deterministic_zip,
)
from synthface.recognition.frcsyn.rules import BUPT_GROUPS, check_training_data, get_subtask
from synthface.recognition.frcsyn.scoring import format_submission, score_run
from synthface.recognition.frcsyn.threshold import choose_threshold

GROUPS = ["African_female", "African_male", "Asian_female", "Asian_male"]


# ------------------------------------------------------------ rules and formulas


def test_subtasks_and_rules():
    st = get_subtask("1.1", "cvpr2024")
    assert st.task == 1 and st.ranking_metric == "TO" and st.datasets == ("bupt",)
    assert st.max_synthetic_images == 500_000 and st.synthetic_only
    st2 = get_subtask("2.3", "cvpr2024")
    assert st2.ranking_metric == "AVG" and st2.datasets == ("agedb", "bupt", "cfp-fp", "rof")
    with pytest.raises(InputError, match=r"no sub-task '2\.3'"):
        get_subtask("2.3", "wacv2024")
    assert check_training_data(st, synthetic_images=500_000) == []
    assert "exceed" in check_training_data(st, synthetic_images=500_001)[0]
    assert (
        "synthetic-only"
        in check_training_data(st, synthetic_images=10, real_datasets=["CASIA-WebFace"])[0]
    )
    assert check_training_data(st2, synthetic_images=10, real_datasets=["CASIA-WebFace"]) == []
    assert "not allowed" in check_training_data(st2, synthetic_images=10, real_datasets=["MS1M"])[0]
    wacv = get_subtask("1.1", "wacv2024")
    assert (
        "only the provided"
        in check_training_data(wacv, synthetic_images=1, synthetic_sources=["ID3"])[0]
    )


def test_threshold_hand_computed():
    labels = np.array([1, 1, 1, 0, 0, 0], bool)
    scores = np.array([0.9, 0.8, 0.6, 0.7, 0.3, 0.2])
    # accept>=0.8: FNMR 1/3 FMR 0; accept>=0.6: FNMR 0 FMR 1/3 -> tie, the stricter wins;
    # threshold sits halfway to the next lower score 0.7.
    rec = choose_threshold(labels, scores, source="cal")
    assert rec.value == pytest.approx(0.75)
    assert rec.fmr == 0.0 and rec.fnmr == pytest.approx(1 / 3)
    assert (rec.num_genuine, rec.num_impostor) == (3, 3)
    rec = choose_threshold(labels, scores, method="target_fmr", target_fmr=0.34)
    assert rec.value == pytest.approx(0.45) and rec.fmr == pytest.approx(1 / 3) and rec.fnmr == 0


def test_metrics_hand_computed():
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0], bool)
    decisions = np.array([1, 0, 1, 0, 1, 1, 0, 1])
    groups = ["A", "A", "A", "A", "B", "B", "B", "B"]
    assert fm.group_accuracies(decisions, labels, groups) == {"A": 100.0, "B": 25.0}
    m = fm.dataset_metrics(np.linspace(1, 0, 8), decisions, labels, groups)
    assert m["group_avg"] == 62.5 and m["group_sd"] == 37.5
    s = fm.system_metrics(1, {"bupt": m})
    assert s["TO"] == 25.0 and s["ranking_metric"] == "TO" and s["ranking_value"] == 25.0
    assert fm.gap(real=90.0, syn=100.0) == pytest.approx(-10.0)
    assert fm.gap(real=95.0, syn=90.0) == pytest.approx(5.0 / 90.0 * 100)


def test_format_submission_decision_uses_written_score():
    text, dec = format_submission(np.array([0.5000000049, 0.49999999]), 0.50000000)
    assert text == "0.50000000,1\n0.49999999,0\n" and dec.tolist() == [1, 0]


def test_comparison_paths_are_checked(tmp_path):
    (tmp_path / "x_comparison.txt").write_text("a/b.jpg;../../etc/passwd\n")
    with pytest.raises(InputError, match="unsafe"):
        read_comparisons(tmp_path, "x")
    (tmp_path / "y_comparison.txt").write_text("a/b.jpg;c/d.jpg\n")
    (tmp_path / "y_ground_truth.txt").write_text("1\n0\n")
    with pytest.raises(InputError, match="2 labels for 1 comparisons"):
        read_comparisons(tmp_path, "y")


def test_zip_bytes_are_deterministic(tmp_path):
    entries = {"b/proposed.txt": b"0.1,0\n", "a/baseline.txt": b"0.2,1\n"}
    write_deterministic_zip(tmp_path / "1.zip", entries)
    write_deterministic_zip(tmp_path / "2.zip", dict(reversed(list(entries.items()))))
    assert (tmp_path / "1.zip").read_bytes() == (tmp_path / "2.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "1.zip") as zf:
        assert zf.namelist() == ["a/baseline.txt", "b/proposed.txt"]


# ------------------------------------------------------------ a synthetic tree


def make_tree(
    root: Path, datasets, *, subjects=6, per=3, seed=0, prefix="s", size=4, groups=GROUPS
):
    """Comparison tree with small random PNGs (the stand-in systems only read the paths)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "comparisons").mkdir(parents=True)
    for d in datasets:
        lines, gt = [], []
        for g in groups:
            imgs = [[f"{g}/{prefix}{d}{k}/{i}.jpg" for i in range(per)] for k in range(subjects)]
            for k in range(subjects):
                for i in range(per):
                    for j in range(i + 1, per):
                        lines.append(f"{imgs[k][i]};{imgs[k][j]}")
                        gt.append("1")
                    other = int((k + 1 + rng.integers(subjects - 1)) % subjects)
                    lines.append(f"{imgs[k][i]};{imgs[other][int(rng.integers(per))]}")
                    gt.append("0")
        (root / "comparisons" / f"{d}_comparison.txt").write_text("\n".join(lines) + "\n")
        (root / "comparisons" / f"{d}_ground_truth.txt").write_text("\n".join(gt) + "\n")
        for rel in read_comparisons(root / "comparisons", d).images():
            (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / "images" / rel)
    return root


def stand_in_system(noise_by_group: dict[str, float], base_noise: float):
    """Test-only 'recognizer': identity vector from the subject folder + per-image noise."""

    def embed(images_dir, relpaths):
        out = []
        for p in relpaths:
            group, subject, _ = p.split("/")
            h = lambda s: int(hashlib.sha256(s.encode()).hexdigest()[:8], 16)  # noqa: E731
            ident = np.random.default_rng(h(subject)).normal(size=32)
            noise = np.random.default_rng(h(p)).normal(size=32)
            v = ident + (base_noise + noise_by_group.get(group, 0.0)) * noise
            out.append(v / np.linalg.norm(v))
        return np.array(out, np.float32)

    return embed


SYSTEMS = {
    "proposed": stand_in_system({"Asian_male": 0.6}, 0.9),
    "baseline": stand_in_system({}, 0.7),
}


@pytest.fixture(scope="module")
def run_task2(tmp_path_factory):
    """One scored 2.1 run shared by the package/validate tests (they only read it)."""
    root = tmp_path_factory.mktemp("task2")
    st = get_subtask("2.1")
    ev = make_tree(root / "eval", st.datasets, seed=1)
    cal = make_tree(root / "cal", ["train_holdout"], seed=2, prefix="t")
    run = score_run(st, ev, cal, SYSTEMS, root / "run", plots=False)
    return st, ev, cal, root / "run", run


def test_score_run_metrics_match_independent_count(run_task2):
    st, ev, _, run_dir, run = run_task2
    assert json.loads((run_dir / "run.json").read_text())["subtask"] == "2.1"
    accs = {}
    for d in st.datasets:
        gt = [
            ln == "1" for ln in (ev / "comparisons" / f"{d}_ground_truth.txt").read_text().split()
        ]
        lines = (run_dir / "scores" / d / "proposed.txt").read_text().splitlines()
        assert len(lines) == len(gt)
        thr = run["thresholds"]["proposed"]["value"]
        for ln in lines:
            s, dec = ln.split(",")
            assert int(dec) == int(float(s) >= thr)
        accs[d] = 100 * np.mean([ln.endswith(",1") == g for ln, g in zip(lines, gt)])
    m = run["metrics"]["systems"]["proposed"]
    assert m["AVG"] == pytest.approx(np.mean(list(accs.values())))
    b = run["metrics"]["systems"]["baseline"]
    assert run["metrics"]["GAP"] == pytest.approx((b["AVG"] - m["AVG"]) / m["AVG"] * 100)
    assert 50 < m["AVG"] < 100 and b["AVG"] > m["AVG"]  # informative, baseline less noisy
    assert run["thresholds"]["proposed"]["source"].endswith("cal")
    for f in ("report.md", "metrics.json", "thresholds.json"):
        assert (run_dir / f).stat().st_size > 0
    md = (run_dir / "report.md").read_text()
    assert "Training-data rule" in md and "GAP" in md


def test_task1_bias_metrics(tmp_path):
    st = get_subtask("1.2", "wacv2024")
    ev = make_tree(tmp_path / "eval", ["bupt"], subjects=8, seed=3)
    cal = make_tree(tmp_path / "cal", ["holdout"], seed=4, prefix="t")
    run = score_run(st, ev, cal, SYSTEMS, tmp_path / "run")
    p = run["metrics"]["systems"]["proposed"]
    groups = p["datasets"]["bupt"]["groups"]
    assert sorted(groups) == sorted(GROUPS)
    vals = np.array(list(groups.values()))
    assert p["AVG"] == pytest.approx(vals.mean()) and p["SD"] == pytest.approx(vals.std())
    assert p["TO"] == pytest.approx(vals.mean() - vals.std())
    assert groups["Asian_male"] == min(groups.values())  # the noisier group is worst
    pngs = sorted(p.name for p in (tmp_path / "run").glob("*.png"))
    assert pngs == [
        "curves_bupt.png",
        "groups_baseline.png",
        "groups_proposed.png",
        "hist_bupt.png",
    ]
    assert "![groups_proposed.png]" in (tmp_path / "run" / "report.md").read_text()


def test_group_map_overrides_the_path_rule(tmp_path):
    """Real BUPT folders hold only the ethnicity: 4 groups by path, 8 with a group map."""
    st = get_subtask("1.1")
    races = ("African", "Asian", "Caucasian", "Indian")
    ev = make_tree(tmp_path / "eval", ["bupt"], subjects=4, seed=3, groups=races)
    cal = make_tree(tmp_path / "cal", ["holdout"], seed=4, prefix="t")
    by_path = score_run(st, ev, cal, SYSTEMS, tmp_path / "by_path", plots=False)["metrics"]
    assert by_path["group_assignment"]["groups"] == list(races)
    assert len(by_path["systems"]["proposed"]["datasets"]["bupt"]["groups"]) == 4
    assert "pass a group map" in (tmp_path / "by_path" / "report.md").read_text()
    # subject (its directory) -> race x gender
    gm = tmp_path / "groups.csv"
    gm.write_text(
        "\n".join(
            ["subject,group"]
            + [f"{r}/sbupt{k},{r}_{'male' if k % 2 else 'female'}" for r in races for k in range(4)]
        )
        + "\n"
    )
    run = score_run(st, ev, cal, SYSTEMS, tmp_path / "mapped", plots=False, group_map=gm)
    m = run["metrics"]
    assert m["group_assignment"]["source"] == "group map"
    assert m["group_assignment"]["groups"] == sorted(BUPT_GROUPS)
    groups = m["systems"]["proposed"]["datasets"]["bupt"]["groups"]
    assert sorted(groups) == sorted(BUPT_GROUPS)
    vals = np.array(list(groups.values()))
    assert m["systems"]["proposed"]["TO"] == pytest.approx(vals.mean() - vals.std())
    md = (tmp_path / "mapped" / "report.md").read_text()
    assert "BUPT groups (8) from group map" in md and "pass a group map" not in md
    # a subject the map does not know is an error naming it
    gm.write_text("African/sbupt0,African_female\n")
    with pytest.raises(InputError, match="no group for the subject"):
        score_run(st, ev, cal, SYSTEMS, tmp_path / "bad", plots=False, group_map=gm)


def test_group_map_file_errors_and_last_component_subjects(tmp_path):
    from synthface.recognition.frcsyn.groups import GroupMap, assign_groups

    f = tmp_path / "g.tsv"
    f.write_text("# BUPT genders\nm.0ab\tAfrican_male\nAsian/m.0cd\tAsian_female\n")
    gm = GroupMap.load(f)
    groups, record = assign_groups(["African/m.0ab/1.jpg", "Asian/m.0cd/2.jpg"], gm)
    assert groups == ["African_male", "Asian_female"] and record["sha256"] == gm.sha256
    f.write_text("m.0ab,African_male\nm.0ab,African_female\n")
    with pytest.raises(InputError, match=r"g.tsv:2: subject 'm.0ab' is in group"):
        GroupMap.load(f)
    f.write_text("just-one-column\n")
    with pytest.raises(InputError, match=r"g.tsv:1: expected 'subject,group'"):
        GroupMap.load(f)


def test_threshold_never_from_evaluation_data(tmp_path):
    import shutil

    st = get_subtask("1.1")
    ev = make_tree(tmp_path / "eval", ["bupt"], seed=1)
    with pytest.raises(InputError, match="training-side"):
        score_run(st, ev, ev, SYSTEMS, tmp_path / "run")
    # a renamed copy of the evaluation set: same images under another dataset name
    cal = tmp_path / "cal"
    shutil.copytree(ev / "images", cal / "images")
    (cal / "comparisons").mkdir()
    for suffix in ("comparison", "ground_truth"):
        src = ev / "comparisons" / f"bupt_{suffix}.txt"
        (cal / "comparisons" / f"copy_{suffix}.txt").write_bytes(src.read_bytes())
    with pytest.raises(InputError, match="identical to evaluation images"):
        score_run(st, ev, cal, SYSTEMS, tmp_path / "run")
    assert not (tmp_path / "run" / "run.json").exists()
    # same relpaths but different image content is fine (e.g. another world seed)
    other = make_tree(tmp_path / "other", ["bupt"], seed=9)
    assert score_run(st, ev, other, SYSTEMS, tmp_path / "run", plots=False)["subtask"] == "1.1"


# ------------------------------------------------------------ package + validate


def test_package_validate_roundtrip(run_task2, tmp_path):
    _, ev, _, run_dir, _ = run_task2
    z1 = package_run(run_dir, tmp_path / "sub1")
    z2 = package_run(run_dir, tmp_path / "sub2")
    assert z1.name == "2.1.zip" and z1.read_bytes() == z2.read_bytes()
    assert (tmp_path / "sub1" / "2.1" / "cfp-fp" / "baseline.txt").is_file()
    for run in (None, run_dir):
        rep = validate_package(z1, ev / "comparisons", run_dir=run)
        assert rep.ok, rep.problems
        assert len(rep.checked) == 8


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    edit(entries)
    write_deterministic_zip(dst, entries)
    return dst


def _lines_edit(name, fn):
    def edit(entries):
        lines = entries[name].decode().splitlines()
        entries[name] = ("\n".join(fn(lines)) + "\n").encode()

    return edit


def _swap(lines):
    # swap a genuine and an impostor line (different scores)
    lines[0], lines[3] = lines[3], lines[0]
    return lines


def _flip_decision(lines):
    s, d = lines[5].split(",")
    lines[5] = f"{s},{1 - int(d)}"
    return lines


def _nan(lines):
    lines[2] = "nan," + lines[2].split(",")[1]
    return lines


@pytest.mark.parametrize(
    "edit,needs_run,message",
    [
        (
            _lines_edit("agedb/proposed.txt", lambda ls: ls[:-1]),
            False,
            "lines but agedb_comparison.txt has",
        ),
        (_lines_edit("rof/baseline.txt", _swap), True, "out of order"),
        (_lines_edit("bupt/proposed.txt", _flip_decision), True, "inconsistent with score"),
        (_lines_edit("cfp-fp/proposed.txt", _nan), False, "must be finite"),
        (
            lambda e: e.__setitem__("cfp_fp/proposed.txt", e.pop("cfp-fp/proposed.txt")),
            False,
            "unexpected entry",
        ),
        (lambda e: e.pop("bupt/baseline.txt"), False, "bupt/baseline.txt: missing"),
    ],
    ids=[
        "missing-line",
        "swapped-order",
        "decision-vs-threshold",
        "nan-score",
        "wrong-folder",
        "missing-file",
    ],
)
def test_validate_catches_each_defect(run_task2, tmp_path, edit, needs_run, message, capsys):
    _, ev, _, run_dir, _ = run_task2
    good = package_run(run_dir, tmp_path / "sub")
    bad = _rewrite(good, tmp_path / "bad" / "2.1.zip", edit)
    rep = validate_package(bad, ev / "comparisons", run_dir=run_dir if needs_run else None)
    assert not rep.ok
    assert any(message in p for p in rep.problems), rep.problems
    args = ["frcsyn", "validate", str(bad), "--comparisons", str(ev / "comparisons")]
    if needs_run:
        args += ["--run", str(run_dir)]
    assert main(args) == 1
    assert "INVALID" in capsys.readouterr().out


def test_validate_without_run_catches_decisions_fitting_no_threshold(run_task2, tmp_path):
    _, ev, _, run_dir, _ = run_task2
    good = package_run(run_dir, tmp_path / "sub")

    def flip_top(lines):  # the highest-scoring comparison gets decision 0
        top = max(range(len(lines)), key=lambda i: float(lines[i].split(",")[0]))
        lines[top] = lines[top].split(",")[0] + ",0"
        return lines

    bad = _rewrite(good, tmp_path / "bad" / "2.1.zip", _lines_edit("agedb/proposed.txt", flip_top))
    rep = validate_package(bad, ev / "comparisons")
    assert any("fit no single threshold" in p for p in rep.problems)


# ------------------------------------------------------------ CLI with real (tiny) models


def test_cli_score_package_validate_with_tiny_models(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from PIL import Image

    from synthface.recognition import create_backbone, save_recognizer

    for name, seed in (("prop", 0), ("base", 1)):
        torch.manual_seed(seed)
        save_recognizer(
            create_backbone("tiny", input_size=32, embedding_dim=8).eval(), tmp_path / name, {}
        )
    rng = np.random.default_rng(0)
    for tree, ds in (("eval", "bupt"), ("cal", "hold")):
        root = make_tree(tmp_path / tree, [ds], subjects=2, per=2, prefix=tree, seed=len(tree))
        cset = read_comparisons(root / "comparisons", ds)
        for rel in cset.images():
            p = root / "images" / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
    code = main(
        [
            "frcsyn", "score", "--subtask", "1.1", "--eval-tree", str(tmp_path / "eval"),
            "--calibration", str(tmp_path / "cal"), "--proposed", str(tmp_path / "prop"),
            "--baseline", str(tmp_path / "base"), "--out", str(tmp_path / "run"), "--json",
            "--no-plots",
        ]
    )  # fmt: skip
    assert code == 0
    run = json.loads(capsys.readouterr().out)
    assert (
        run["models"]["proposed"].endswith("prop") and "TO" in run["metrics"]["systems"]["proposed"]
    )
    assert (
        main(["frcsyn", "package", str(tmp_path / "run"), "--out", str(tmp_path / "sub"), "--json"])
        == 0
    )
    zip_path = json.loads(capsys.readouterr().out)["zip"]
    assert (
        main(
            [
                "frcsyn",
                "validate",
                zip_path,
                "--comparisons",
                str(tmp_path / "eval" / "comparisons"),
                "--run",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    assert "valid cvpr2024 1.1 package" in capsys.readouterr().out


# ------------------------------------------------------------ calibration from training shards


def test_calibration_from_training_shards(tmp_path, capsys):
    from synthface.pipeline.shards import iter_samples
    from synthface.pipeline.world import make_world_dataset

    ds = tmp_path / "train"
    make_world_dataset(ds, identities=6, per_identity=3, size=32)
    out = tmp_path / "cal"
    args = ["frcsyn", "calibration", "--from-shards", str(ds), "--out", str(out)]
    assert main([*args, "--identities", "5", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_genuine"] == info["num_impostor"] == 5
    cset = read_comparisons(out / "comparisons", "calibration", need_labels=True)
    assert cset.labels.tolist() == [True] * 5 + [False] * 5
    ident = [int(p.split("/")[1]) for p in cset.first]
    other = [int(p.split("/")[1]) for p in cset.second]
    assert [a == b for a, b in zip(ident, other)] == cset.labels.tolist()  # impostors differ
    # each identity's last two images, byte for byte
    last = {}
    for s in iter_samples(ds, decode=False):
        last.setdefault(s["label"], []).append(s["image"])
    for a, b in zip(cset.first[:5], cset.second[:5]):
        i = int(a.split("/")[1])
        assert (out / "images" / a).read_bytes() == last[i][-2]
        assert (out / "images" / b).read_bytes() == last[i][-1]
    # a re-run with the same arguments is a no-op; the tree feeds the threshold choice
    assert main([*args, "--identities", "5"]) == 0
    assert "5 genuine + 5 impostor" in capsys.readouterr().out
    with pytest.raises(InputError, match="has 6 identities, 9 were asked"):
        from synthface.recognition.frcsyn.calibration import calibration_from_shards

        calibration_from_shards(ds, tmp_path / "x", identities=9)


def test_calibration_holdout_identities_never_reach_training(tmp_path, capsys):
    """Held-out identities: the tree uses exactly them, the training view leaves them out,
    and a loader reading through that view never yields one of their samples."""
    from synthface.pipeline.config import validate_config
    from synthface.pipeline.world import make_world_dataset
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.frcsyn.calibration import holdout_identities
    from synthface.recognition.training.data import inspect_dataset, open_batches

    ds = tmp_path / "train"
    make_world_dataset(ds, identities=8, per_identity=3, size=32)
    held = holdout_identities(ds, fraction=0.25, seed=1)
    assert len(held) == 2 and held == holdout_identities(ds, fraction=0.25, seed=1)
    assert {tuple(holdout_identities(ds, fraction=0.25, seed=s)) for s in range(6)} != {tuple(held)}
    out = tmp_path / "cal"
    args = ["frcsyn", "calibration", "--from-shards", str(ds), "--out", str(out), "--seed", "1"]
    assert main([*args, "--holdout-fraction", "0.25", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["holdout"]["identities"] == held and info["identities_used"] == 2
    cset = read_comparisons(out / "comparisons", "calibration", need_labels=True)
    assert {int(p.split("/")[1]) for p in cset.first + cset.second} == set(held)
    view = json.loads((ds / "views" / "frcsyn-train.json").read_text())
    assert view["identities"] == [i for i in range(8) if i not in held]
    assert (view["num_identities"], view["num_samples"]) == (6, 18)

    cfg = validate_config(
        {"data": {"train": str(ds), "batch_size": 6, "num_workers": 0, "view": "frcsyn-train"},
         "model": {"backbone": "tiny", "input_size": 32, "embedding_dim": 8}},
        TrainConfig,
    )  # fmt: skip
    info = inspect_dataset(cfg.data)
    assert info.num_classes == 6
    seen = set()
    for batch in open_batches(info, cfg.data, num_batches=12, seed=0,
                              fields={"id": lambda s: float(s["__key__"][:8])}):  # fmt: skip
        seen |= {int(i) for i in batch.fields["id"].tolist()}
    assert seen and not seen & set(held)

    # named identities, a second view name; bad requests are one line each
    assert main([*args, "--holdout-identities", "1,3", "--view", "cal13"]) == 0
    assert "held-out identities" in capsys.readouterr().out
    assert json.loads((ds / "views" / "cal13.json").read_text())["excluded_identities"] == {
        "1": ["frcsyn_calibration_holdout"],
        "3": ["frcsyn_calibration_holdout"],
    }
    with pytest.raises(InputError, match="identity 9 is not in"):
        holdout_identities(ds, identities=[1, 9])
    with pytest.raises(InputError, match="leaves fewer than 2"):
        holdout_identities(ds, identities=list(range(7)))
    assert main([*args, "--holdout-fraction", "1.5"]) == 1


def test_validate_without_run_warns_what_it_did_not_check(run_task2, tmp_path, capsys):
    _, ev, _, run_dir, _ = run_task2
    good = package_run(run_dir, tmp_path / "sub")
    rep = validate_package(good, ev / "comparisons")
    assert rep.ok and "no run given" in rep.warnings[0]
    assert main(["frcsyn", "validate", str(good), "--comparisons", str(ev / "comparisons")]) == 0
    assert "warning: no run given" in capsys.readouterr().err
    assert not validate_package(good, ev / "comparisons", run_dir=run_dir).warnings
