"""The benchmark's stage graph end to end on a tiny world (plain functions, no Prefect).

One module-scoped chain of runs in one output directory, every row trained with two
seeds:

1. generators ``[plain]``, with the evaluation of the ``plain`` set made to fail (a
   killed run);
2. the same config again: finished stages are skipped, the run resumes at the stage
   that failed;
3. ``id3`` added to the list, with an identity-scaling series of ``id3``: only its
   stages (and the report) run;
4. a relabelled copy of ``plain``: it shares the trained generator.

Everything is real but tiny (a few identities, a few optimiser steps, one torch thread):
the numbers check plumbing, resume and the evaluation code, never model quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthface.generators.benchmark import evaluate as E
from synthface.generators.benchmark.config import BenchmarkConfig, load_benchmark_config
from synthface.generators.benchmark.run import run_benchmark
from synthface.pipeline.cli import main
from synthface.pipeline.config import validate_config
from synthface.pipeline.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[1]

TINY_GENERATOR = [
    "unet.block_out_channels=[16, 16]",
    "unet.cross_attention_levels=[false, true]",
    "unet.cross_attention_dim=16",
    "unet.attention_head_dim=4",
    "conditioning.mlp_hidden=[32]",
    "conditioning.identity_tokens=2",
    "train.steps=2",
    "train.batch_size=8",
    "train.checkpoint_every=2",
    "data.shuffle_buffer=16",
    "id3.anchor_iterations=5",
]


def tiny_config(out: Path, generators=("plain",), **sections) -> BenchmarkConfig:
    data = {
        "name": "tiny",
        "output_dir": str(out),
        "image_size": 32,
        "threads": 1,
        "real": {
            "world": {"identities": 12, "per_identity": 4},
            "protocols": {"names": ["lfw", "bupt"], "folds": 2, "pairs_per_fold": 16},
            "calibration_identities": 8,
        },
        "budget": {"identities": 6, "per_identity": 3},
        "judge": {"world": {"identities": 8, "per_identity": 3, "seed": 1}},
        "generators": [
            {
                "name": g,
                "config": str(ROOT / "configs" / "generators" / "id3_world.yaml"),
                "overrides": TINY_GENERATOR,
            }
            for g in generators
        ],
        "generation": {"sampler": "ddim", "steps": 2, "id_guidance_scale": 0.0},
        "recognition": {
            "recipe": str(ROOT / "configs" / "recognition" / "world_tiny.yaml"),
            "overrides": [
                "model.input_size=32",
                "model.embedding_dim=32",
                "model.params={widths: [8, 8, 16, 16]}",
                "train.max_steps=2",
                "data.batch_size=16",
                "data.num_workers=0",
                "data.shuffle_buffer=64",
                "checkpoint.every_steps=0",
            ],
            "seeds": [0],
        },
        "evaluation": {"batch_size": 64},
        "variation": {
            "world": {"identities": 8, "per_identity": 3, "seed": 2},
            "steps": 2,
            "batch_size": 8,
            "max_identities": 4,
        },
        "distance": {},
        "scaling": {},
    }
    for key, value in sections.items():
        data[key].update(value)
    return validate_config(data, BenchmarkConfig, "tiny")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("bench") / "run"
    real_verification = E.verification

    def killed(stage_dir, model, bins, **kw):
        if Path(stage_dir).name.startswith("plain-"):
            raise RuntimeError("killed during evaluation/plain")
        return real_verification(stage_dir, model, bins, **kw)

    seeds = {"seeds": [0, 1]}
    E.verification = killed
    try:
        with pytest.raises(RuntimeError, match="killed"):
            run_benchmark(tiny_config(out, recognition=seeds))
    finally:
        E.verification = real_verification
    first = sorted(p.parent.relative_to(out / "stages").as_posix() for p in out.rglob("stage.json"))
    second = run_benchmark(tiny_config(out, recognition=seeds))
    scaling = {"identities": [4, 6], "generator": "id3"}
    third = run_benchmark(
        tiny_config(out, generators=("plain", "id3"), recognition=seeds, scaling=scaling)
    )
    third["report_on_disk"] = json.loads(Path(third["report"]["json"]).read_text())
    third["markdown_on_disk"] = Path(third["report"]["markdown"]).read_text()
    relabelled = tiny_config(out, generators=("plain", "id3"), recognition=seeds).model_dump(
        mode="json"
    )
    relabelled["generators"].append({**relabelled["generators"][0], "label": "plain-again"})
    fourth = run_benchmark(validate_config(relabelled, BenchmarkConfig, "tiny"))
    torch.set_num_threads(threads)
    return {"out": out, "first": first, "second": second, "third": third, "fourth": fourth}


def _labels(stage_dirs: list[str]) -> set[str]:
    """``kind/name-<key>`` -> ``kind/name``."""
    return {d.rsplit("-", 1)[0] for d in stage_dirs}


def test_a_killed_run_resumes_at_the_stage_it_was_in(runs):
    first = _labels(runs["first"])
    second = runs["second"]["stages"]
    # Everything the killed run finished is found complete; it resumes in evaluation/plain.
    # The real-all row's seed-0 recognizer is the conditioning encoder's twin (same recipe,
    # same data): found complete under the encoder's name, never trained twice.
    assert "recognizer/real-all-seed0" not in first and "recognizer/encoder" in first
    assert first | {"recognizer/real-all-seed0"} == set(second["skipped"])
    assert "evaluation/plain-seed0" not in first and "generator/plain" in first
    assert "evaluation/real-all-seed1" in first  # the reference rows are evaluated first
    assert second["executed"][0] == "evaluation/plain-seed0"
    assert set(second["executed"]) == {
        "evaluation/plain-seed0",
        "evaluation/plain-seed1",
        "evaluation/real+plain-seed0",
        "evaluation/real+plain-seed1",
        "real/variation-world",
        "real/variation-held-out",
        "regressor/pose-age",
        "variation/real",
        "variation/plain",
    }


def test_adding_a_generator_runs_only_its_stages(runs):
    third = runs["third"]["stages"]
    assert sorted(third["executed"]) == sorted(
        [
            "generator/id3",
            "synthetic/id3",
            "distance/id3",
            "trainset/real+id3",
            *[f"{k}/{s}-seed{i}" for k in ("recognizer", "evaluation")
              for s in ("id3", "real+id3", "id3-4ids") for i in (0, 1)],
            "synthetic/id3-4ids",  # the scaling series' extra count (6 is the table's row)
            "variation/id3",
        ]
    )  # fmt: skip
    assert set(runs["second"]["stages"]["executed"]) | set(runs["second"]["stages"]["skipped"]) <= (
        set(third["skipped"])
    )


def test_a_relabelled_entry_shares_the_trained_generator(runs):
    """Entries that differ only in label (and sampler options) train one generator; with
    the same sampler options they are the same set, generated once."""
    stages = runs["fourth"]["stages"]
    assert "synthetic/plain-again" in stages["skipped"]
    assert not any(s.startswith(("generator/", "synthetic/")) for s in stages["executed"])


def test_sampler_options_are_checked_and_reach_the_generate_config(tmp_path):
    from synthface.generators.benchmark.generation import generation_config
    from synthface.generators.benchmark.models import check_sampler_options, generator_config

    cfg = load_benchmark_config(ROOT / "configs/benchmark/cpu.yaml")
    entries = {e.id: e for e in cfg.generators}
    assert entries["uiface"].sampler_options == {"two_stage": True, "injection": True}
    one_stage = entries["uiface"].model_copy(  # the ablation's entry, as docs/benchmark.md
        update={"label": "uiface-one-stage", "sampler_options": {"two_stage": False,
                                                                 "injection": False}}
    )  # fmt: skip
    gcfg = generator_config(one_stage, image_size=32, encoder="e", data="d", dim=128)
    check_sampler_options(one_stage, gcfg)
    gen = generation_config(tmp_path, name="uiface", checkpoint="c", judge="j", gallery=None,
                            cfg=cfg, sampler_options=one_stage.sampler_options)  # fmt: skip
    assert gen.generator.sampler_options == {"two_stage": False, "injection": False}
    typo = one_stage.model_copy(update={"sampler_options": {"two_stages": True}})
    with pytest.raises(
        InputError, match=r"generators\[uiface-one-stage\]\.sampler_options: .*'two_stages'"
    ):
        check_sampler_options(typo, gcfg)
    id3 = entries["id3"].model_copy(update={"sampler_options": {"two_stage": True}})
    with pytest.raises(InputError, match=r"generators\[id3\]\.sampler_options: .*takes no"):
        check_sampler_options(id3, generator_config(id3, image_size=32, encoder="e",
                                                    data="d", dim=128))  # fmt: skip


def test_bad_sampler_options_fail_before_any_stage_runs(tmp_path):
    data = tiny_config(tmp_path / "run", generators=("plain", "id3")).model_dump(mode="json")
    data["generators"][1]["sampler_options"] = {"two_stage": True}
    with pytest.raises(InputError, match=r"generators\[id3\]\.sampler_options: .*takes no"):
        run_benchmark(validate_config(data, BenchmarkConfig, "tiny"))
    assert not (tmp_path / "run" / "stages").exists()


def test_report_has_every_set_protocol_frcsyn_row_and_plot(runs):
    s = runs["third"]
    report = Path(s["report"]["markdown"]).read_text()
    assert set(s["sets"]) == {"real", "real-all", "plain", "id3", "real+plain", "real+id3"}
    assert s["sets"]["real"]["num_samples"] == 18 == s["sets"]["id3"]["num_samples"]
    assert s["sets"]["real-all"]["num_samples"] == 48  # every real training image
    assert s["sets"]["real+id3"]["num_samples"] == 48 + 18
    assert s["protocols"] == ["lfw", "bupt"]
    for name in s["sets"]:
        assert f"`{name}`" in report
        for p in s["protocols"]:
            assert 0 <= s["verification"][name][p]["accuracy"] <= 100
    f = s["frcsyn"]["id3"]
    assert f["task1"]["subtask"] == "1.1" and s["frcsyn"]["real+id3"]["task1"]["subtask"] == "1.3"
    assert {"AVG", "SD", "TO"} <= set(f["task1"]["proposed"]) and "AVG" in f["task2"]["proposed"]
    # FRCSyn's image-count rule sees the synthetic images of a real + synthetic row, not its
    # real ones too
    stages = Path(s["report"]["json"]).parents[1] / "stages" / "evaluation"
    counts = {
        m.parent.name.split("-seed")[0]: json.loads(m.read_text())["inputs"]["synthetic_images"]
        for m in stages.glob("*-seed0-*/stage.json")
    }
    assert counts["real+id3"] == counts["id3"] == 18 and counts["real-all"] == 0
    assert Path(s["report"]["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = s["report_on_disk"]  # read before the fourth run rewrote the report
    assert on_disk["gap_to_real"] == s["gap_to_real"]
    v = s["variation"]
    assert set(v["sets"]) == {"real", "plain", "id3"}
    assert set(v["sets"]["real"]["predicted"]) == {"yaw", "pitch", "age"}
    assert v["sets"]["real"]["recorded"]["yaw"] > 0  # ground truth of the world images


def test_gap_comes_from_the_eval_verify_code(runs, capsys):
    """The benchmark's accuracies are what `synthface eval verify --bin` prints."""
    s = runs["third"]
    bins = sorted((runs["out"] / "stages" / "protocols").glob("world-*/*.bin"))
    assert [b.stem for b in bins] == ["bupt", "lfw"]
    for name in ("real", "id3"):
        for i, model in enumerate(s["sets"][name]["recognizers"].values()):
            args = ["eval", "verify", "--model", model, "--json"]
            for b in bins:
                args += ["--bin", str(b)]
            assert main(args) == 0
            cli = {r["name"]: r for r in json.loads(capsys.readouterr().out)["results"]}
            for p in s["protocols"]:
                assert s["verification"][name][p]["per_seed"][i] == 100 * cli[p]["accuracy"]
    for p in s["protocols"]:
        want = s["verification"]["real"][p]["accuracy"] - s["verification"]["id3"][p]["accuracy"]
        assert s["gap_to_real"]["id3"][p] == pytest.approx(want, abs=1e-9)


def test_generated_anchors_lie_in_the_data_region_and_keep_the_margin(runs):
    from synthface.generators.region import load_identity_region

    s = runs["third"]
    for g in ("plain", "id3"):
        a = s["generation"][g]["anchors"]
        assert a["anchor_region"] == "data" and a["guard"] is True
        assert a["anchor_to_nearest_training_cos"]["max"] <= a["max_cos_to_training"] + 1e-4
        assert not s["generation"][g]["warnings"]  # the judge is independent of the encoder
        region = load_identity_region(s["generation"][g]["generator"])
        assert region.num_identities == 12  # the real world set's identities
        ds = Path(json.loads((runs["out"] / "report" / "benchmark.json").read_text())["stages_dir"])
        anchors = np.load(next(ds.glob(f"synthetic/{g}-*/dataset/plan/anchors.npy")))
        qc_report = next(ds.glob(f"synthetic/{g}-*/dataset/report/report.md")).read_text()
        assert "no anchor above cos 0.8 to any of them" in qc_report
        assert (anchors @ region.centroids.T).max() <= 0.8 + 1e-4
        # inside the region: closer to the training identities' mean than whole-sphere anchors
        mean = region.mean / np.linalg.norm(region.mean)
        assert (anchors @ mean).mean() > 0.5


def _marker(out: Path, kind: str, name: str) -> dict:
    """A stage's marker, its ``@root/...`` paths under this run's stages folder."""
    from synthface.pipeline.stages import local_paths

    (path,) = (out / "stages" / kind).glob(f"{name}-{'[0-9a-f]' * 12}/stage.json")
    return local_paths(json.loads(path.read_text()), out / "stages")


def test_generated_sets_train_through_their_qc_view_by_default(runs):
    """recognition.view (default qc): the synthetic recognizer's head has the view's K
    classes, real + synthetic holds only the view's identities, and the view is part of
    both stage keys; real-data recognizers read no view."""
    from safetensors.torch import load_file

    out = runs["out"]
    syn = Path(_marker(out, "synthetic", "plain")["result"]["path"])
    view = json.loads((syn / "views" / "qc.json").read_text())
    rec = _marker(out, "recognizer", "plain-seed0")
    assert (
        rec["inputs"]["view"] == "qc"
        and "view" not in _marker(out, "recognizer", "real-seed0")["inputs"]
    )
    run = Path(rec["result"]["model"]).parent
    assert json.loads((run / "config.json").read_text())["data"]["view"] == "qc"
    (ckpt,) = sorted(run.glob("checkpoints/step-*"))[-1:]
    heads = [v for k, v in load_file(ckpt / "model.safetensors").items() if k.startswith("head.")]
    assert heads and heads[0].shape[0] == view["num_identities"]
    # "leak" is read on the judge's own scale: the real identities' nearest-other p95
    p95 = _marker(out, "gallery", "judge-real")["result"]["real_nearest_neighbour_cos"]["p95"]
    qc = json.loads((syn / "dataset.json").read_text())["splits"]["train"]["config"]["qc"]
    assert qc["max_gallery_similarity"] == p95
    # the report counts what the recognizer trained on: the view's images
    trained = runs["third"]["sets"]["plain"]
    assert (trained["num_identities"], trained["num_samples"]) == (
        view["num_identities"],
        view["num_samples"],
    )
    assert runs["third"]["view"] == "qc"
    merged = _marker(out, "trainset", "real+plain")
    assert merged["inputs"]["view"] == "qc"
    merged_cfg = json.loads((Path(merged["result"]["path"]) / "dataset.json").read_text())
    real = merged_cfg["splits"]["train"]["config"]["real"]  # all real images
    assert merged_cfg["splits"]["train"]["config"]["synthetic_view"] == "qc"
    assert merged["result"]["num_identities"] == real["num_identities"] + view["num_identities"]
    assert merged["result"]["num_samples"] == real["num_samples"] + view["num_samples"]


def test_real_plus_synthetic_takes_only_the_synthetic_view(tmp_path):
    from synthface.generators.benchmark.data import merge_sets
    from synthface.pipeline.qc.views import write_identity_view
    from synthface.pipeline.shards import iter_samples
    from synthface.pipeline.world import make_world_dataset

    make_world_dataset(tmp_path / "real", identities=3, per_identity=2, size=32)
    make_world_dataset(tmp_path / "syn", identities=4, per_identity=2, size=32, seed=5)
    write_identity_view(tmp_path / "syn", "qc", excluded_identities={1: ["leak"]}, criteria={})
    merged = merge_sets(tmp_path / "merged", str(tmp_path / "real"), str(tmp_path / "syn"),
                        view="qc")  # fmt: skip
    assert (merged["num_identities"], merged["num_samples"]) == (3 + 3, 6 + 6)
    syn = {s["__key__"]: s["image"] for s in iter_samples(tmp_path / "syn", decode=False)}
    got = {s["__key__"]: s["image"] for s in iter_samples(tmp_path / "merged", decode=False)}
    # synthetic identities 0, 2, 3 become 3, 4, 5; identity 1 (left out) is nowhere
    for new, old in ((3, 0), (4, 2), (5, 3)):
        assert got[f"{new:08d}/0000"] == syn[f"{old:08d}/0000"]
    assert not any(img == syn["00000001/0000"] for img in got.values())


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"generators": [{"name": "plain"}]}, "exactly one of config"),
        ({"generation": {"qc": {"recognizer": "x"}}}, "always judges with its own"),
        ({"real": {"source": "shards"}}, "needs train"),
        ({"recognition": {"view": "strict"}}, "recognition.view 'strict'"),
        ({"recognition": {"seeds": [0, 0]}}, r"seeds \[0, 0\]: give distinct"),
        ({"scaling": {"generator": "nope"}}, "scaling.generator 'nope': not a generator"),
        ({"scaling": {"identities": [4, 4]}}, r"identities \[4, 4\]: distinct"),
    ],
)
def test_config_errors_name_the_field(tmp_path, edit, message):
    data = tiny_config(tmp_path).model_dump(mode="json")
    for key, value in edit.items():
        if isinstance(value, dict):
            data[key].update(value)
        else:
            data[key] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(data, BenchmarkConfig, "x.yaml")


def test_unknown_generator_is_refused_naming_the_registry(tmp_path):
    from synthface.generators.benchmark.models import check_registered

    with pytest.raises(ConfigError, match=r"unknown generator 'uiface_typo' \(known: .*id3"):
        check_registered("uiface_typo")


@pytest.mark.parametrize(
    "path", ["configs/benchmark/cpu.yaml", "bench/gpu/benchmark_synthetic.yaml"]
)
def test_shipped_benchmark_configs_point_at_real_files(path):
    from synthface.generators.benchmark.models import check_entries, generator_config

    cfg = load_benchmark_config(ROOT / path)
    assert Path(cfg.recognition.recipe).is_file()
    check_entries(cfg)  # registered names, valid sampler options
    for entry in cfg.generators:
        gcfg = generator_config(entry, image_size=cfg.image_size, encoder="e", data="d", dim=128)
        assert gcfg.generator == entry.name and gcfg.image_size == cfg.image_size


def test_every_row_trains_one_recognizer_per_seed_and_reports_mean_and_std(runs):
    """Two seeds: two recognizer stages per row keyed by train.seed, the row's figures are
    the mean and sample std of the per-seed ones, and real + synthetic is compared with
    real-all (the same real images), synthetic-only with real (the same image count)."""
    out, s = runs["out"], runs["third"]
    seeds = [_marker(out, "recognizer", f"id3-seed{i}")["inputs"]["recipe"]["train"]["seed"]
             for i in (0, 1)]  # fmt: skip
    assert seeds == [0, 1] and s["seeds"] == [0, 1]
    for name in s["sets"]:
        assert len(s["sets"][name]["recognizers"]) == 2
        per = [np.mean([s["verification"][name][p]["per_seed"][i] for p in s["protocols"]])
               for i in (0, 1)]  # fmt: skip
        assert s["mean_accuracy"][name] == pytest.approx(np.mean(per))
        assert s["mean_accuracy_std"][name] == pytest.approx(np.std(per, ddof=1))
    assert (
        s["sets"]["real+id3"]["reference"]
        == "real-all"
        == s["gap_to_real"]["real+id3"]["reference"]
    )
    assert s["gap_to_real"]["id3"]["reference"] == "real" and "real-all" not in s["gap_to_real"]
    # FRCSyn's baseline system for real + synthetic is real-all's recognizer of that seed
    ev = _marker(out, "evaluation", "real+id3-seed1")["inputs"]
    assert ev["baseline"] == _marker(out, "recognizer", "real-all-seed1")["key"]
    report = Path(s["report"]["markdown"]).read_text()
    assert "`real-all`" in report and "mean +- std over seeds" in report


def test_each_generated_set_gets_a_frechet_distance_and_a_gate_verdict(runs):
    s = runs["third"]
    ref = s["distance"]["reference"]
    assert ref["images"] == 18 and ref["fd_real_floor"] >= 0 and ref["fd_texture"] >= 0
    for g in ("plain", "id3"):
        d = s["distance"]["sets"][g]
        assert d["images"] == 18 and d["fd"] >= 0
        assert d["verdict"] in ("faces", "not faces", "undecided")
    assert "face gate" in Path(s["report"]["markdown"]).read_text()


def test_the_identity_scaling_series_produces_its_rows(runs):
    s = runs["third"]
    sc = s["scaling"]
    assert sc["generator"] == "id3" and sc["chosen_by"] == "named in scaling.generator"
    assert [r["identities"] for r in sc["rows"]] == [4, 6]
    small, table = sc["rows"]
    assert table["set"] == "id3" and table["images"] == s["sets"]["id3"]["num_samples"]
    assert small["set"] == "id3-4ids" and 0 < small["images"] <= 4 * 3
    assert len(small["mean_accuracy"]["per_seed"]) == 2
    assert "id3-4ids" not in s["sets"]  # a series row, not a table row
    # verified on every protocol; FRCSyn only for the table's rows
    ev = _marker(runs["out"], "evaluation", "id3-4ids-seed0")
    assert ev["inputs"]["calibration"] is None and set(ev["result"]) == {"verification"}
    assert "## Identity scaling: `id3`" in s["markdown_on_disk"]  # before the fourth run


def test_scaling_picks_the_best_set_that_passes_the_gate():
    from types import SimpleNamespace

    from synthface.generators.benchmark.run import BenchmarkRun, best_generator

    def result(acc):
        return {"verification": {"lfw": {"accuracy": acc, "std": 1.0}}}

    run = BenchmarkRun.__new__(BenchmarkRun)
    run.cfg = SimpleNamespace(scaling=SimpleNamespace(generator=None))
    run.bins = {"lfw": "x"}
    run.synthetic = {"a": {}, "b": {}, "c": {}}
    run.results = {"a": {0: result(90.0)}, "b": {0: result(70.0)}, "c": {0: result(80.0)}}
    run.distance = {"sets": {"a": {"verdict": "not faces"}, "b": {"verdict": "faces"},
                             "c": {"verdict": "faces"}}}  # fmt: skip
    assert best_generator(run) == ("c", "best mean accuracy among sets that pass the face gate")
    run.distance = {"sets": {g: {"verdict": "not faces"} for g in "abc"}}
    assert best_generator(run) == ("a", "best mean accuracy (no set passes the face gate)")
    run.distance = {"sets": {"a": {"verdict": "undecided"}, "b": {"verdict": "faces"}}}
    assert best_generator(run)[1].endswith("(undecided, counted as passing: a, c)")
    run.distance = None  # distance.enabled: false: no gate ran, and the reason says so
    assert best_generator(run) == ("a", "best mean accuracy (no face gate)")


def test_frechet_distance_equals_the_direct_formula_on_known_gaussians():
    from scipy import linalg

    from synthface.generators.benchmark.distance import frechet_distance, gaussian

    rng = np.random.default_rng(0)
    # diagonal covariances: FD = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 exactly
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-9)
    # full covariances: against scipy's sqrtm of the product
    m1, m2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    c1, c2 = m1 @ m1.T + 0.1 * np.eye(6), m2 @ m2.T + 0.1 * np.eye(6)
    # Tr (C1 C2)^(1/2) = sum of the square roots of C1 C2's (real, positive) eigenvalues
    root = np.sum(np.sqrt(np.linalg.eigvals(c1 @ c2).real))
    want = np.trace(c1) + np.trace(c2) - 2 * root
    assert want == pytest.approx(np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real))
    assert frechet_distance(np.zeros(6), c1, np.zeros(6), c2) == pytest.approx(want, rel=1e-8)
    assert frechet_distance(np.zeros(6), c1, np.zeros(6), c1) == pytest.approx(0, abs=1e-6)
    # sample statistics are numpy's mean and unbiased covariance
    x = rng.multivariate_normal(mu1, np.diag(a), size=4000)
    mu, cov = gaussian(x)
    assert np.allclose(mu, x.mean(0)) and np.allclose(cov, np.cov(x, rowvar=False))
    assert frechet_distance(mu, cov, mu1, np.diag(a)) < 0.02  # converges to the truth


def _write_images(out: Path, images: np.ndarray, per_identity: int = 4) -> str:
    from synthface.pipeline.shards import DatasetWriter, Sample, encode_image

    with DatasetWriter(out, config={"kind": "test-images", "n": len(images)}) as writer:
        for i, im in enumerate(images):
            writer.add(Sample(i // per_identity, i % per_identity, encode_image(im, "png"),
                              "png", {}))  # fmt: skip
        writer.close()
    return str(out)


def test_the_texture_control_keeps_each_images_mean_colour():
    """The control is the real floor's images with their phases scrambled: same colour and
    spectrum, no face. A flipped DC phase blackened about half of them (mean -> -mean,
    clipped), which made the control too easy to beat and the gate lenient."""
    from synthface.generators.benchmark.distance import phase_scramble

    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(128, 25, (64, 32, 32, 3)), 0, 255).astype(np.uint8)
    images[:, 8:24, 8:24] = rng.integers(60, 200, (64, 1, 1, 3))  # a "face" block each
    out = phase_scramble(images, seed=3)
    mean_in = images.reshape(64, -1, 3).mean(1)
    mean_out = out.reshape(64, -1, 3).mean(1)
    assert np.abs(mean_out - mean_in).max() < 3.0, np.abs(mean_out - mean_in).max()
    assert not np.array_equal(out, images)  # scrambled, not copied


def test_the_gate_fails_texture_and_noise_sets_and_passes_real_faces(tmp_path):
    """With a trained judge (the demo recognizer, 32 px world faces): world faces of other
    identities pass; smooth coloured textures and pixel noise, the undertrained
    generator's failure mode, are flagged 'not faces'."""
    from scipy.ndimage import gaussian_filter

    from synthface.generators.benchmark.distance import real_reference, set_distance
    from synthface.pipeline.world import make_world_dataset

    judge = str(ROOT / "data" / "demo" / "models" / "recognizer" / "model")
    make_world_dataset(tmp_path / "real", identities=200, per_identity=4, size=32, seed=0)
    make_world_dataset(tmp_path / "faces", identities=100, per_identity=4, size=32, seed=7)
    # (the halves are hashed: about 100 identities x 4 each)
    ref = real_reference(tmp_path, judge, str(tmp_path / "real"), images=360, device="cpu")
    assert ref["images"] == 360 and ref["fd_texture"] > ref["fd_real_floor"]
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (400, 32, 32, 3)).astype(np.uint8)
    smooth = np.stack([gaussian_filter(rng.standard_normal((32, 32, 3)), (3, 3, 0))
                       for _ in range(400)])  # fmt: skip
    smooth = smooth / smooth.std() * 50 + 128 + rng.normal(0, 30, (400, 1, 1, 3))
    texture = np.clip(smooth, 0, 255).astype(np.uint8)
    verdict = {
        name: set_distance(tmp_path, judge, path, ref, real=str(tmp_path / "real"), device="cpu")
        for name, path in (
            ("faces", str(tmp_path / "faces")),
            ("texture", _write_images(tmp_path / "texture", texture)),
            ("noise", _write_images(tmp_path / "noise", noise)),
        )
    }
    assert verdict["faces"]["verdict"] == "faces", verdict
    assert verdict["texture"]["verdict"] == "not faces", verdict
    assert verdict["noise"]["verdict"] == "not faces", verdict
    assert verdict["faces"]["fd"] < verdict["texture"]["fd"]


def test_distance_images_spread_over_identities(tmp_path):
    """A world set stores each identity's images together: the first n in shard order are
    a handful of identities, whose clusters then dominate the Gaussian (the table's real
    floor rose to the texture control's distance). The distance takes one image of every
    identity before a second of any."""
    from synthface.generators.benchmark.distance import _images, spread_quota

    assert spread_quota({0: 3, 1: 1, 2: 3}, 5) == {0: 2, 1: 1, 2: 2}
    assert spread_quota({0: 3, 1: 1, 2: 3}, 2) == {0: 1, 1: 1, 2: 0}  # label order
    assert spread_quota({0: 2, 1: 1}, 10) == {0: 2, 1: 1}  # fewer images than asked
    images = np.zeros((40, 8, 8, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(40) // 4  # identity in a pixel: 10 identities x 4
    path = _write_images(tmp_path / "set", images, per_identity=4)
    picked = _images(path, 8)[:, 0, 0, 0]
    assert sorted(picked.tolist()) == list(range(8))  # 8 identities, not 2
    even = _images(path, 8, lambda k: k % 2 == 0)[:, 0, 0, 0]
    assert sorted(even.tolist()) == [0, 0, 2, 2, 4, 4, 6, 8]  # second round: 0, 2, 4


def test_the_reference_and_floor_halves_do_not_follow_label_runs():
    """The world assigns demographic groups round-robin (label % 4): a parity split made
    the reference two groups and the floor the other two, and the floor measured a
    demographic shift. The hashed halves hold every group in both."""
    from synthface.generators.benchmark.distance import half_of

    labels = np.arange(800)
    halves = np.array([half_of(k) for k in labels])
    for period in (2, 4):
        for r in range(period):
            share = halves[labels % period == r].mean()
            assert 0.4 < share < 0.6, (period, r, share)


def test_each_set_is_gated_against_a_floor_of_its_own_identity_structure(tmp_path):
    """A set of few identities sits further from a reference spread over many than one of
    many does, whatever it draws (FD measures identity clusters too): so each set's floor
    and texture control are real images with the set's structure, and real faces of few
    identities score as real faces (against a floor spread over many they scored as half
    faces: docs/benchmarks.md, "The face gate")."""
    from synthface.generators.benchmark.distance import (
        gate,
        matched_quota,
        real_reference,
        set_distance,
    )
    from synthface.pipeline.world import make_world_dataset

    # one identity per entry, one with enough images (3 has only 2: it gets the 2)
    counts = {1: 4, 3: 2, 5: 4, 7: 4}
    q = matched_quota(counts, [3, 2, 3])
    assert sorted(q.values()) == [2, 3, 3] and all(q[k] <= counts[k] for k in q)
    # too few images per identity: the rest from further identities, the total kept
    q = matched_quota({1: 2, 3: 2, 5: 2, 7: 2}, [4])
    assert sum(q.values()) == 4 and max(q.values()) == 2
    assert matched_quota({1: 2, 3: 1}, [4, 4, 4]) == {1: 2, 3: 1}  # what there is
    judge = str(ROOT / "data" / "demo" / "models" / "recognizer" / "model")
    real = str(tmp_path / "real")
    # world seeds other than 0: the judge (the demo recognizer) never saw these identities
    make_world_dataset(real, identities=160, per_identity=10, size=32, seed=3)
    make_world_dataset(tmp_path / "few", identities=12, per_identity=10, size=32, seed=7)
    ref = real_reference(tmp_path, judge, real, images=160, device="cpu")
    d = set_distance(tmp_path, judge, str(tmp_path / "few"), ref, real=real, device="cpu")
    assert d["images"] == 120 and d["identities"] == 12
    # the matched floor is further than the spread one: what the fix corrects for
    assert d["fd_floor"] > ref["fd_real_floor"]
    spread = gate(d["fd"], ref["fd_real_floor"], ref["fd_texture"])["face_score"]
    assert d["verdict"] == "faces" and d["face_score"] > spread, (d, ref)


def test_a_user_dataset_enters_a_key_by_its_shards_bytes(tmp_path):
    """Photos re-ingested with the same options (same manifest config hash and counts) are
    another real set: every stage that reads it must run again."""
    from synthface.generators.benchmark.data import dataset_identity

    rng = np.random.default_rng(0)
    a = _write_images(tmp_path / "a", rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8))
    b = _write_images(tmp_path / "b", rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8))
    ia, ib = dataset_identity(a), dataset_identity(b)
    assert ia["config_hash"] == ib["config_hash"] and ia["num_samples"] == ib["num_samples"]
    assert ia != ib and ia == dataset_identity(a)
