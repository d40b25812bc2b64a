"""ID³ pieces: Tammes anchors, per-image conditions, attribute priors, CLI, shards output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from synthface.generators.base import create_generator
from synthface.generators.dataset import generate_dataset
from synthface.generators.dataset.config import GenerateConfig
from synthface.generators.id3.anchors import packing_stats, random_unit_vectors, tammes_anchors
from synthface.generators.id3.attributes import AttributePrior
from synthface.generators.id3.identities import identity_conditions
from synthface.pipeline.cli import main
from synthface.pipeline.errors import InputError
from tests.generators_helpers import tiny_config

torch.set_num_threads(1)


def test_anchors_beat_random_on_minimum_angle():
    n, d = 300, 16
    ours = packing_stats(tammes_anchors(n, d, iterations=60, block=128, seed=1))
    rand = packing_stats(random_unit_vectors(n, d, seed=1))
    assert ours["min_angle_deg"] > rand["min_angle_deg"] + 15
    assert ours["mean_nn_cos"] < rand["mean_nn_cos"] - 0.1
    again = tammes_anchors(n, d, iterations=60, block=128, seed=1)
    assert torch.equal(again, tammes_anchors(n, d, iterations=60, block=128, seed=1))
    assert torch.allclose(again.norm(dim=1), torch.ones(n), atol=1e-5)


def test_few_anchors_approach_the_simplex_optimum():
    # d + 1 points in R^d: the optimum is the regular simplex, cos = -1/d.
    d = 7
    stats = packing_stats(tammes_anchors(d + 1, d, iterations=400, block=8, seed=0))
    assert stats["max_nn_cos"] < -1 / d + 0.02


def test_identity_conditions_lie_in_the_cosine_band():
    anchors = tammes_anchors(5, 32, iterations=10).numpy()
    ys, cs = identity_conditions(anchors, 20, (0.5, 0.7), seed=3)
    cos = np.einsum("imd,id->im", ys, anchors)
    assert np.allclose(np.linalg.norm(ys, axis=2), 1, atol=1e-5)
    assert np.allclose(cos, cs, atol=1e-5)
    assert cs.min() >= 0.5 and cs.max() <= 0.7 and cs.std() > 0.03
    # the deviation directions differ between images of one identity
    dev = ys[0] - cs[0][:, None] * anchors[0]
    assert np.abs(np.corrcoef(dev)[np.triu_indices(20, 1)]).mean() < 0.5
    # identity i's conditions do not depend on where generation starts
    tail, _ = identity_conditions(anchors[2:], 20, (0.5, 0.7), seed=3, first_identity=2)
    np.testing.assert_array_equal(tail, ys[2:])


def test_attribute_prior_reproduces_the_training_histogram():
    rng = np.random.default_rng(0)
    rows = np.stack([rng.normal(35, 8, 5000), rng.normal(0, 20, 5000)], 1)
    prior = AttributePrior.fit(rows, ["age", "yaw"], [(0, 100), (-90, 90)])
    drawn = prior.sample(5000, np.random.default_rng(1))
    assert abs(drawn[:, 0].mean() - 35) < 1.0 and abs(drawn[:, 0].std() - 8) < 1.0
    assert abs(drawn[:, 1].mean()) < 1.5 and abs(drawn[:, 1].std() - 20) < 1.5
    back = AttributePrior.from_dict(json.loads(json.dumps(prior.to_dict())))
    np.testing.assert_array_equal(back.counts, prior.counts)


def test_cli_anchors_writes_npy_and_reports_against_random(tmp_path, capsys):
    out = tmp_path / "a.npy"
    code = main(
        [
            "generator",
            "anchors",
            "--n",
            "64",
            "--dim",
            "8",
            "--iterations",
            "20",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    arr = np.load(out)
    assert arr.shape == (64, 8) and arr.dtype == np.float32
    assert report["anchors"]["min_angle_deg"] > report["random"]["min_angle_deg"]


QC_DIM = 12  # differs from ID_DIM: stored embeddings are the QC recognizer's, not conditions


@pytest.fixture(scope="module")
def sample_models(tmp_path_factory):
    """A saved tiny ID³ checkpoint with a yaw prior, and a tiny QC recognizer."""
    from synthface.recognition import create_backbone, save_recognizer

    root = tmp_path_factory.mktemp("sample_models")
    torch.manual_seed(0)
    gen = create_generator("id3", tiny_config(sampler={"steps": 2}))
    gen.attribute_prior = AttributePrior.fit([[-20.0], [30.0]], ["yaw"], [(-90, 90)])
    ckpt = gen.save_pretrained(root / "g")
    rec = save_recognizer(
        create_backbone("tiny", input_size=16, embedding_dim=QC_DIM), root / "rec", {}
    )
    return ckpt, rec


def sample_config(models, out, **identities) -> GenerateConfig:
    ckpt, rec = models
    return GenerateConfig.model_validate(
        {
            "generator": {"checkpoint": str(ckpt), "id_guidance_scale": 0.0, "batch_size": 4},
            "identities": {
                "count": 3,
                "samples_per_identity": 2,
                "seed": 5,
                "anchor_iterations": 5,
                **identities,
            },
            "output": {"dir": str(out), "image_format": "png", "max_samples_per_shard": 2},
            "qc": {"recognizer": str(rec)},
            "report": {"enabled": False},
        }
    )


def test_sampling_a_dataset_writes_resumable_identical_shards(sample_models, tmp_path):
    from synthface.pipeline.shards import iter_samples, load_manifest

    generate_dataset(sample_config(sample_models, tmp_path / "a"))
    manifest = load_manifest(tmp_path / "a")
    assert manifest["splits"]["train"]["num_samples"] == 6
    samples = list(iter_samples(tmp_path / "a"))
    assert [s["label"] for s in samples] == [0, 0, 1, 1, 2, 2]
    assert samples[0]["image"].shape == (16, 16, 3)
    assert all(-90 <= s["meta"]["attributes"]["yaw"] <= 90 for s in samples)
    assert all(0.7 <= s["meta"]["condition_cos"] <= 0.9 for s in samples)
    assert {"centroid_cos", "flags"} <= set(samples[0]["meta"]["qc"])
    assert samples[0]["embedding"].shape == (QC_DIM,)
    # a second run into a fresh directory produces the same shard bytes
    generate_dataset(sample_config(sample_models, tmp_path / "b"))
    tars = sorted((tmp_path / "a" / "shards").glob("*.tar"))
    assert len(tars) == 3
    for a in tars:
        assert a.read_bytes() == (tmp_path / "b" / "shards" / a.name).read_bytes()
    # an interrupted run (a shard lost) is completed by re-running, with the same bytes
    lost = tmp_path / "b" / "shards" / tars[1].name
    lost.unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "b" / "shards").glob("*.tar")}
    generate_dataset(sample_config(sample_models, tmp_path / "b"))
    assert lost.read_bytes() == tars[1].read_bytes()
    for name, mtime in before.items():  # completed shards were skipped, not rewritten
        assert (tmp_path / "b" / "shards" / name).stat().st_mtime_ns == mtime


def test_given_anchors_file_is_used_and_a_bad_one_is_refused(sample_models, tmp_path):
    from synthface.pipeline.shards import load_identity_array

    rng = np.random.default_rng(0)
    given = rng.normal(size=(4, 8)) * 3  # more rows than identities, not normalised
    np.save(tmp_path / "anchors.npy", given)
    generate_dataset(
        sample_config(sample_models, tmp_path / "ds", anchors=str(tmp_path / "anchors.npy"))
    )
    used = load_identity_array(tmp_path / "ds", "anchors")
    expected = given[:3] / np.linalg.norm(given[:3], axis=1, keepdims=True)
    np.testing.assert_allclose(used, expected, atol=1e-6)

    bad = tmp_path / "bad.npy"
    np.save(bad, rng.normal(size=(4, 5)))
    with pytest.raises(InputError) as err:
        generate_dataset(sample_config(sample_models, tmp_path / "x", anchors=str(bad)))
    msg = str(err.value)
    assert str(bad) in msg and "(N, 8)" in msg and "\n" not in msg
    assert not (tmp_path / "x").exists()  # refused before anything is written
    with pytest.raises(InputError, match="holds 4 rows, need 5"):
        generate_dataset(
            sample_config(
                sample_models, tmp_path / "y", count=5, anchors=str(tmp_path / "anchors.npy")
            )
        )


def test_cli_sample_runs_the_generate_config(sample_models, tmp_path, capsys):
    ckpt, rec = sample_models
    np.save(tmp_path / "anchors.npy", np.eye(8)[:3])
    out = tmp_path / "cli"
    args = (
        f"--identities 3 --per-identity 2 --seed 5 --out {out} --ext png "
        f"--max-samples-per-shard 2 --device cpu --id-guidance-scale 0 --batch-size 4 "
        f"--qc-recognizer {rec} --anchors {tmp_path / 'anchors.npy'} --no-report --json"
    )
    assert main(["generator", "sample", str(ckpt), *args.split()]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["identities"] == 3 and info["shards"] == 3 and info["num_samples"] == 6
    assert "report" not in info and not (out / "report").exists()
    from synthface.pipeline.shards import load_identity_array

    np.testing.assert_array_equal(load_identity_array(out, "anchors"), np.eye(8, dtype="f4")[:3])


def test_cli_sample_errors_without_encoder_for_guidance(tmp_path, capsys):
    torch.manual_seed(0)
    gen = create_generator("id3", tiny_config(sampler={"id_guidance_scale": 1.0}))
    ckpt = gen.save_pretrained(tmp_path / "g")
    code = main(
        [
            "generator",
            "sample",
            str(ckpt),
            "--identities",
            "2",
            "--per-identity",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    assert code == 1
    assert "needs --encoder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["id3_world.yaml", "id3_128.yaml"])
def test_shipped_configs_validate(name):
    from pathlib import Path

    from synthface.generators.config import GeneratorConfig
    from synthface.pipeline.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "generators" / name, GeneratorConfig)
    assert cfg.generator == "id3"


def test_cli_train_then_sample_end_to_end(tmp_path, capsys):
    """User path: a recognizer checkpoint, an image folder, train via CLI, sample to shards."""
    import yaml
    from PIL import Image

    from synthface.pipeline.shards import load_manifest
    from synthface.recognition import create_backbone, save_recognizer
    from tests.generators_helpers import toy_samples

    torch.manual_seed(0)
    rec = save_recognizer(
        create_backbone("tiny", input_size=16, embedding_dim=8), tmp_path / "rec", {}
    )
    folder = tmp_path / "faces"
    for s in toy_samples(identities=2, per_identity=3):
        ident, idx = s["__key__"].split("/")
        (folder / ident).mkdir(parents=True, exist_ok=True)
        Image.fromarray(s["image"]).save(folder / ident / f"{idx}.png")
        (folder / ident / f"{idx}.png.json").write_text(json.dumps(s["meta"]))
    cfg = tiny_config(tmp_path, train={"steps": 2}).model_dump(mode="json")
    cfg["encoder"] = {"path": str(rec)}
    cfg["data"].update(source="folder", path=str(folder))
    cfg_path = tmp_path / "gen.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["generator", "train", str(cfg_path), "--json"]) == 0
    final = json.loads(capsys.readouterr().out)["final"]
    out = tmp_path / "synth"
    args = f"--identities 2 --per-identity 2 --out {out} --steps 2 --device cpu --json"
    code = main(["generator", "sample", final, *args.split()])
    assert code == 0, capsys.readouterr().err
    assert load_manifest(out)["splits"]["train"]["num_samples"] == 4


def _cone(n: int, dim: int = 64, axes: int = 8, seed: int = 0) -> np.ndarray:
    """Unit embeddings in a narrow cone spanning ``axes`` directions, like a recognizer's."""
    g = np.random.default_rng(seed)
    mu = g.normal(size=dim)
    mu /= np.linalg.norm(mu)
    x = mu + g.normal(size=(n, axes)) @ (0.15 * g.normal(size=(axes, dim)))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_anchors_within_stay_near_the_data_and_apart():
    from synthface.generators.id3.anchors import anchors_within, packing_stats

    ref = _cone(300)
    within = anchors_within(ref, 40, iterations=50, seed=0)
    whole = tammes_anchors(40, 64, iterations=50, seed=0)
    assert within.shape == (40, 64) and torch.allclose(within.norm(dim=1), torch.ones(40))
    # Close to real identities (whole-sphere anchors are not) ...
    near = (within.numpy() @ ref.T).max(1).mean()
    assert near > 0.75 and near > (whole.numpy() @ ref.T).max(1).mean() + 0.4
    # ... yet better separated than the same number of real identities drawn at random.
    drawn = torch.from_numpy(ref[np.random.default_rng(1).choice(300, 40, replace=False)])
    assert packing_stats(within)["min_angle_deg"] > packing_stats(drawn)["min_angle_deg"] + 10


def test_cli_anchors_within_checks_the_reference(tmp_path, capsys):
    ref = tmp_path / "ref.npy"
    np.save(ref, _cone(50, dim=16))
    out = tmp_path / "a.npy"
    args = ["generator", "anchors", "--n", "10", "--dim", "16", "--iterations", "5"]
    assert main([*args, "--within", str(ref), "--out", str(out)]) == 0
    a = np.load(out)
    assert a.shape == (10, 16) and (a @ np.load(ref).T).max(1).min() > 0.6  # each near data
    capsys.readouterr()
    assert main([*args, "--dim", "8", "--within", str(ref), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--within" in err and "(N, 8) array" in err and "(50, 16)" in err
