"""The benchmark's stage graph end to end on a tiny world (plain functions, no Prefect).

One module-scoped chain of three runs in one output directory:

1. generators ``[plain]``, with the evaluation of the ``plain`` set made to fail (a
   killed run);
2. the same config again: finished stages are skipped, the run resumes at the stage
   that failed;
3. ``id3`` added to the list: only its stages (and the report) run.

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
        },
        "evaluation": {"batch_size": 64},
        "variation": {
            "world": {"identities": 8, "per_identity": 3, "seed": 2},
            "steps": 2,
            "batch_size": 8,
            "max_identities": 4,
        },
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

    E.verification = killed
    try:
        with pytest.raises(RuntimeError, match="killed"):
            run_benchmark(tiny_config(out))
    finally:
        E.verification = real_verification
    first = sorted(p.parent.relative_to(out / "stages").as_posix() for p in out.rglob("stage.json"))
    second = run_benchmark(tiny_config(out))
    third = run_benchmark(tiny_config(out, generators=("plain", "id3")))
    third["report_on_disk"] = json.loads(Path(third["report"]["json"]).read_text())
    relabelled = tiny_config(out, generators=("plain", "id3")).model_dump(mode="json")
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
    assert first == set(second["skipped"])
    assert "evaluation/plain" not in first and "generator/plain" in first
    assert second["executed"][0] == "evaluation/plain"
    assert set(second["executed"]) == {
        "evaluation/plain",
        "evaluation/real+plain",
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
            "trainset/real+id3",
            "recognizer/id3",
            "recognizer/real+id3",
            "evaluation/id3",
            "evaluation/real+id3",
            "variation/id3",
        ]
    )
    assert set(runs["second"]["stages"]["executed"]) | set(runs["second"]["stages"]["skipped"]) <= (
        set(third["skipped"])
    )


def test_a_relabelled_entry_shares_the_trained_generator(runs):
    """Entries that differ only in label (and sampler options) train one generator."""
    executed = set(runs["fourth"]["stages"]["executed"])
    assert "synthetic/plain-again" in executed
    assert not any(s.startswith("generator/") for s in executed), executed


def test_sampler_options_are_checked_and_reach_the_generate_config(tmp_path):
    from synthface.generators.benchmark.generation import generation_config
    from synthface.generators.benchmark.models import check_sampler_options, generator_config

    cfg = load_benchmark_config(ROOT / "configs/benchmark/cpu.yaml")
    entries = {e.id: e for e in cfg.generators}
    one_stage = entries["uiface-one-stage"]
    assert one_stage.sampler_options == {"two_stage": False, "injection": False}
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
    plain = entries["plain"].model_copy(update={"sampler_options": {"two_stage": True}})
    with pytest.raises(InputError, match=r"generators\[plain\]\.sampler_options: .*takes no"):
        check_sampler_options(plain, generator_config(plain, image_size=32, encoder="e",
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
    assert set(s["sets"]) == {"real", "plain", "id3", "real+plain", "real+id3"}
    assert s["sets"]["real"]["num_samples"] == 18 == s["sets"]["id3"]["num_samples"]
    assert s["sets"]["real+id3"]["num_samples"] == 48 + 18
    assert s["protocols"] == ["lfw", "bupt"]
    for name in s["sets"]:
        assert f"`{name}`" in report
        for p in s["protocols"]:
            assert 0 <= s["verification"][name][p]["accuracy"] <= 100
    f = s["frcsyn"]["id3"]
    assert f["task1"]["subtask"] == "1.1" and s["frcsyn"]["real+id3"]["task1"]["subtask"] == "1.3"
    assert {"AVG", "SD", "TO"} <= set(f["task1"]["proposed"]) and "AVG" in f["task2"]["proposed"]
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
        args = ["eval", "verify", "--model", s["sets"][name]["recognizer"], "--json"]
        for b in bins:
            args += ["--bin", str(b)]
        assert main(args) == 0
        cli = {r["name"]: r for r in json.loads(capsys.readouterr().out)["results"]}
        for p in s["protocols"]:
            assert s["verification"][name][p]["accuracy"] == 100 * cli[p]["accuracy"]
    for p in s["protocols"]:
        want = s["verification"]["real"][p]["accuracy"] - s["verification"]["id3"][p]["accuracy"]
        assert s["gap_to_real"]["id3"][p] == want


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


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"generators": [{"name": "plain"}]}, "exactly one of config"),
        ({"generation": {"qc": {"recognizer": "x"}}}, "always judges with its own"),
        ({"real": {"source": "shards"}}, "needs train"),
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
