"""Generation without a Prefect server: the plain functions the flow orders, and bad input."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from synthface.generators.dataset import generate_dataset, prepare_generation, produce_shard
from synthface.generators.dataset.config import GenerateConfig
from synthface.pipeline.errors import ConfigError, InputError, ShardError
from synthface.pipeline.shards import completed_shards, load_identity_array, load_manifest
from tests.flows_helpers import make_tiny_models, tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_tiny_models(root)
    return root


def tree_hashes(root: Path) -> dict[str, str]:
    """Every dataset file's hash, except the provenance log (who ran each shard, when)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "provenance"
    }


def test_generate_writes_scored_shards_manifest_view_and_report(models, tmp_path):
    cfg = tiny_config(models, tmp_path / "ds")
    summary = generate_dataset(cfg)
    assert summary["num_identities"] == 6 and summary["num_samples"] == 18
    assert summary["num_shards"] == 3  # 6 samples per shard = 2 identities
    ds = tmp_path / "ds"
    split = load_manifest(ds)["splits"]["train"]
    assert split["extra"]["qc"]["num_samples"] == 18
    assert {"anchors", "centroids", "qc_consistency", "qc_separation", "qc_flags"} <= set(
        split["arrays"]
    )
    assert load_identity_array(ds, "qc_consistency").shape == (6,)
    from synthface.pipeline.shards import iter_samples

    first = next(iter_samples(ds, decode=True))
    assert first["image"].shape == (16, 16, 3)
    assert {"centroid_cos", "anchor_cos", "flags"} <= set(first["meta"]["qc"])
    assert first["embedding"].shape == (32,)
    assert json.loads((ds / "views" / "qc.json").read_text())["num_identities"] <= 6
    assert (ds / "report" / "contact_sheet.png").is_file()


def test_resume_redoes_only_missing_or_corrupt_shards_and_matches_bytes(models, tmp_path):
    ref = tmp_path / "ref" / "ds"
    generate_dataset(tiny_config(models, ref))
    cfg = tiny_config(models, tmp_path / "run" / "ds")
    prepared = prepare_generation(cfg)
    for work in prepared.work:
        produce_shard(cfg, work)
    run = tmp_path / "run" / "ds"
    (run / "shards" / "train-000001.tar").unlink()
    shard2 = run / "shards" / "train-000002.tar"
    data = bytearray(shard2.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])  # same size, wrong bytes
    shard2.write_bytes(bytes(data))
    assert sorted(completed_shards(run)) == [0]
    results = [produce_shard(cfg, w) for w in prepared.work]
    assert [r.skipped for r in results] == [True, False, False]
    generate_dataset(cfg)
    assert tree_hashes(run) == tree_hashes(ref)


def test_full_disk_leaves_no_counted_shard(models, tmp_path, monkeypatch):
    from synthface.pipeline.shards import writer

    cfg = tiny_config(models, tmp_path / "ds")
    prepared = prepare_generation(cfg)
    real = writer.ShardWriter._member

    def full(self, name, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.ShardWriter, "_member", full)
    with pytest.raises(ShardError, match="No space left on device"):
        produce_shard(cfg, prepared.work[0])
    assert completed_shards(tmp_path / "ds") == {}
    assert not list((tmp_path / "ds" / "shards").glob("*"))  # temporary file removed too
    monkeypatch.setattr(writer.ShardWriter, "_member", real)
    assert not produce_shard(cfg, prepared.work[0]).skipped
    assert sorted(completed_shards(tmp_path / "ds")) == [0]


def test_bad_input_fails_before_generating(models, tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(
        InputError, match=r"generator\.checkpoint: .*nope: not a generator checkpoint"
    ):
        prepare_generation(
            tiny_config(models, out, generator={"checkpoint": str(tmp_path / "nope")})
        )
    with pytest.raises(ConfigError, match=r"unknown generator 'stylegan' \(known: .*id3.*plain"):
        prepare_generation(tiny_config(models, out, generator={"name": "stylegan"}))
    with pytest.raises(ConfigError, match=r"generator\.name: 'plain' but checkpoint"):
        prepare_generation(tiny_config(models, out, generator={"name": "plain"}))
    with pytest.raises(InputError, match=r"qc\.recognizer: .*missing: no such recognizer"):
        prepare_generation(tiny_config(models, out, qc={"recognizer": str(tmp_path / "missing")}))
    with pytest.raises(InputError, match=r"qc\.gallery: .*g\.npy: no such embeddings file"):
        prepare_generation(tiny_config(models, out, qc={"gallery": str(tmp_path / "g.npy")}))
    assert not out.exists()


def test_gpu_requested_but_absent(models, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    cfg = tiny_config(models, tmp_path / "ds", generator={"device": "cuda"})
    with pytest.raises(
        ConfigError, match=r"cuda requested but torch sees no GPU.*allow_cpu_fallback"
    ):
        prepare_generation(cfg)
    cfg = tiny_config(
        models, tmp_path / "ds", generator={"device": "cuda", "allow_cpu_fallback": True}
    )
    assert prepare_generation(cfg).work


def test_output_dir_holding_another_dataset(models, tmp_path):
    out = tmp_path / "ds"
    generate_dataset(tiny_config(models, out))
    with pytest.raises(ShardError, match="already holds a different 'train' dataset"):
        prepare_generation(tiny_config(models, out, identities={"seed": 2}))
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ShardError, match="not empty and holds no synthface dataset"):
        prepare_generation(tiny_config(models, foreign))


def test_the_qc_recognizer_enters_the_dataset_identity_by_its_weights(models, tmp_path):
    """A recognizer moved elsewhere (same bytes) resumes the dataset; one whose weights
    were swapped in place is another dataset (its .npy members and QC would change)."""
    import shutil

    rec = tmp_path / "rec"
    shutil.copytree(models / "recognizer", rec)
    out = tmp_path / "ds"
    generate_dataset(tiny_config(models, out, qc={"recognizer": str(rec)}))
    moved = tmp_path / "elsewhere" / "rec"
    shutil.copytree(rec, moved)
    prepare_generation(tiny_config(models, out, qc={"recognizer": str(moved)}))  # resumes
    prepare_generation(tiny_config(models, out, qc={"recognizer": str(rec), "block": 7}))
    weights = moved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="already holds a different 'train' dataset"):
        prepare_generation(tiny_config(models, out, qc={"recognizer": str(moved)}))


def test_leaked_identity_is_dropped_from_the_view(models, tmp_path):
    ref = tmp_path / "ref"
    generate_dataset(tiny_config(models, ref))
    centroids = load_identity_array(ref, "centroids")
    gallery = np.concatenate([np.random.default_rng(0).standard_normal((20, 32)), centroids[[2]]])
    np.save(tmp_path / "gallery.npy", gallery.astype(np.float32))
    out = tmp_path / "ds"
    summary = generate_dataset(
        tiny_config(
            models,
            out,
            qc={"gallery": str(tmp_path / "gallery.npy"), "max_gallery_similarity": 0.99},
        )
    )
    view = json.loads((out / "views" / "qc.json").read_text())
    assert view["excluded_identities"]["2"] == ["leak"]
    assert 2 not in view["identities"] and summary["qc"]["flagged_identities"]["leak"] >= 1
    _check_dataset_card(out, summary, view)
    # the manifest keeps the gallery's hash, not its path: a re-audit asks for it again
    from synthface.pipeline.cli import main

    assert main(["qc", "view", str(out), "--name", "again"]) == 1
    gallery = ["--gallery", str(tmp_path / "gallery.npy")]
    assert main(["qc", "view", str(out), "--name", "again", *gallery]) == 0
    again = json.loads((out / "views" / "again.json").read_text())
    assert again["excluded_identities"]["2"] == ["leak"]


def _check_dataset_card(out: Path, summary: dict, view: dict) -> None:
    """The dataset card: front matter, counts, provenance, the audit and the view;
    rewritten byte for byte by a second finalize; `shards verify` takes the dataset."""
    import yaml

    from synthface.pipeline.cli import main
    from synthface.pipeline.dataset_card import card_text

    card = (out / "README.md").read_text()
    assert summary["card"] == str(out / "README.md")
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "other" and meta["size_categories"] == ["n<1K"]
    assert "synthetic" in meta["tags"] and meta["task_categories"]
    split = load_manifest(out)["splits"]["train"]
    assert f"| identities | {summary['num_identities']} |" in body
    assert f"| images | {summary['num_samples']} |" in body
    assert split["config"]["generator"]["checkpoint_sha256"] in body
    assert f"keeps {view['num_identities']} identities and {view['num_samples']} images" in body
    assert "leak 1" in body and "gallery" in body  # the leakage audit's result
    space = split["extra"].get("embedding_space")
    assert ("unrecorded" in body.split("## Embedding space")[1].split("##")[0]) == (not space)
    assert card_text(out, checkpoint=body.split("- checkpoint: `")[1].split("`")[0]) == card
    assert main(["shards", "verify", str(out)]) == 0
    assert load_identity_array(out, "qc_gallery_index")[2] == 20
    assert load_manifest(out)["splits"]["train"]["num_identities"] == 6  # nothing deleted


def test_embedded_default_config_finds_the_demo_models_and_writes_where_the_user_is(
    tmp_path, monkeypatch
):
    from synthface.flows.defaults import load_default_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYNTHFACE_HOME", raising=False)
    cfg = load_default_config()
    assert cfg.name == "default" and cfg.runner.kind == "thread"
    # inputs next to the config (configs/generate/../../data), outputs under the cwd
    assert Path(cfg.generator.checkpoint) == ROOT / "data/demo/models/generator/final"
    assert (Path(cfg.generator.checkpoint) / "config.json").is_file()
    assert Path(cfg.generator.encoder) == ROOT / "data/demo/models/recognizer/model"
    assert Path(cfg.output.dir) == tmp_path / "out/demo/dataset"
    monkeypatch.setenv("SYNTHFACE_HOME", str(tmp_path / "home"))
    assert Path(load_default_config().output.dir) == tmp_path / "home/out/demo/dataset"


def test_flow_parameters_and_overrides_are_validated():
    from synthface.flows.generate import resolve_config

    base = GenerateConfig(generator={"checkpoint": "/models/gen"})
    cfg = resolve_config(base, identities=5, overrides=["qc.duplicate_similarity=0.9"])
    assert cfg.identities.count == 5 and cfg.qc.duplicate_similarity == 0.9
    with pytest.raises(ConfigError, match="give config or config_file, not both"):
        resolve_config(base, config_file="synthface:generate/default.yaml")
    with pytest.raises(ConfigError, match=r"identities\.count: must be >= 1 \(got 0\)"):
        resolve_config(base, overrides=["identities.count=0"])
    with pytest.raises(ConfigError, match=r"runner\.kindd: unknown key"):
        resolve_config(base, overrides=["runner.kindd=dask"])


def test_prefect_env_defaults_and_unreachable_server(tmp_path, monkeypatch):
    import socket

    from synthface.flows.defaults import prepare_prefect_env

    monkeypatch.chdir(tmp_path)
    env: dict[str, str] = {}
    assert prepare_prefect_env(env) is None
    assert env["PREFECT_HOME"] == str(tmp_path / ".prefect")  # where the user is
    env = {"SYNTHFACE_HOME": str(tmp_path / "home")}
    prepare_prefect_env(env)
    assert env["PREFECT_HOME"] == str(tmp_path / "home" / ".prefect")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    with pytest.raises(InputError, match=f"Prefect server unreachable at PREFECT_API_URL={url}"):
        prepare_prefect_env({"PREFECT_API_URL": url})


def test_qc_view_cli_refilters_without_touching_shards(models, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ds"
    generate_dataset(tiny_config(models, out))
    before = tree_hashes(out)
    consistency = load_identity_array(out, "qc_consistency")
    cut = float(np.median(consistency))
    res = subprocess.run(
        [
            Path(sys.executable).parent / "synthface",
            "qc",
            "view",
            out,
            "--name",
            "strict",
            "--set",
            f"min_identity_consistency={cut}",
            "--set",
            "drop_identities=[low_consistency]",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    view = json.loads((out / "views" / "strict.json").read_text())
    assert view["identities"] == [i for i in range(6) if consistency[i] >= cut]
    after = tree_hashes(out)
    assert after.pop("views/strict.json") and after == before  # nothing else changed
    # re-auditing under the settings it was made with rewrites the same view, byte for byte
    from synthface.pipeline.cli import main

    assert main(["qc", "view", str(out), "--name", "qc"]) == 0
    assert tree_hashes(out)["views/qc.json"] == before["views/qc.json"]


def test_the_demo_replaces_its_own_stale_dataset_and_nothing_else(models, tmp_path):
    """`make demo` after an upgrade that changed the dataset identity (or after the demo
    models changed) regenerates its own dataset, where a user's run would be refused."""
    from synthface.flows.demo import _replace_stale_dataset

    root = tmp_path / "demo"
    out = root / "dataset"
    generate_dataset(tiny_config(models, out))
    _replace_stale_dataset(tiny_config(models, out), root)  # the same dataset: kept
    assert (out / "dataset.json").is_file()
    _replace_stale_dataset(tiny_config(models, out, identities={"seed": 5}), root)
    assert not out.exists()  # another dataset in the demo's own folder: replaced
    elsewhere = tmp_path / "mine"
    generate_dataset(tiny_config(models, elsewhere))
    _replace_stale_dataset(tiny_config(models, elsewhere, identities={"seed": 5}), root)
    assert (elsewhere / "dataset.json").is_file()  # outside the demo folder: untouched
