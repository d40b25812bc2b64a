"""Recognizer training end to end on tiny synthetic shards (CPU, seconds per run).

The dataset: identities are random 4x4 colour grids blown up to 32x32, samples add
pixel noise and a small shift, so a tiny iResNet separates them within a few epochs.
"""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from synthface.pipeline.cli import main as cli_main
from synthface.pipeline.config import load_config, validate_config
from synthface.pipeline.errors import ConfigError, InputError, ShardError
from synthface.pipeline.formats.verification_bin import write_bin
from synthface.pipeline.shards import DatasetWriter, Sample, encode_image
from synthface.recognition.config import TrainConfig
from synthface.recognition.training import TrainingDiverged, train

IDS, PER, SIZE = 8, 16, 32
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _identity_images(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    base = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
    big = np.kron(base, np.ones((SIZE // 4, SIZE // 4, 1), np.float32))
    out = []
    for _ in range(count):
        img = np.roll(big + rng.normal(0, 30, big.shape), rng.integers(-2, 3), axis=1)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Training shards plus a verification .bin of unseen samples of the same identities."""
    root = tmp_path_factory.mktemp("training")
    rng = np.random.default_rng(0)
    images = [_identity_images(rng, PER + 8) for _ in range(IDS)]
    writer = DatasetWriter(root / "ds", config={"test": "blobs", "ids": IDS}, max_samples=40)
    for i in range(IDS):
        for j in range(PER):
            data = encode_image(images[i][j], "png")
            writer.add(Sample(identity=i, index=j, image=data, ext="png"))
    writer.close()
    pairs, same = [], []
    for k in range(40):  # 20 genuine, 20 impostor pairs from the 8 held-back samples
        a = k % IDS
        b = a if k % 2 == 0 else (a + 1 + k % (IDS - 1)) % IDS
        pairs += [images[a][PER + k % 8], images[b][PER + (k + 3) % 8]]
        same.append(a == b)
    write_bin(root / "heldout.bin", [encode_image(p, "png") for p in pairs], same)
    return {"root": root, "data": root / "ds", "bin": root / "heldout.bin"}


def _cfg(world: dict[str, Path], out: Path, **sections) -> TrainConfig:
    data = {
        "data": {"train": str(world["data"]), "batch_size": 16, "num_workers": 0,
                 "shuffle_buffer": 1024},
        "model": {"backbone": "tiny", "input_size": SIZE, "embedding_dim": 64},
        "head": {"name": "arcface", "params": {"scale": 16, "margin": 0.2}},
        "optim": {"lr": 0.1},
        "schedule": {"warmup_epochs": 1},
        "train": {"output_dir": str(out), "epochs": 8, "device": "cpu"},
        "checkpoint": {"every_steps": 16, "keep": 5},
        "logging": {"every_steps": 8, "progress": False},
    }  # fmt: skip
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return validate_config(data, TrainConfig)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_learning_happens(world, tmp_path):
    cfg = _cfg(world, tmp_path / "run", validation={"sets": [str(world["bin"])], "every_steps": 32})
    result = train(cfg)

    assert result.completed and result.global_step == 64  # 8 epochs x 128 / 16
    rows = _rows(tmp_path / "run" / "metrics.csv")
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < 0.5 * first, (first, last)
    assert float(rows[-1]["accuracy"]) > 0.6  # chance is 1/8, and the margin lowers this
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    # verification of unseen samples through the evaluation module, during and after training
    val = _rows(tmp_path / "run" / "validation.csv")
    assert [int(r["step"]) for r in val] == [32, 64]
    assert result.validation["heldout"] == pytest.approx(float(val[-1]["accuracy"]), abs=1e-6)
    assert result.validation["heldout"] >= 0.8  # chance is 0.5

    from synthface.recognition.checkpoint import load_recognizer

    model = load_recognizer(result.model_dir)
    assert model(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 64)


def test_resume_is_exact(world, tmp_path):
    """2N steps straight == N steps, stop, resume N steps: identical weights, bit for bit.

    Augmentations, Partial FC sampling and gradient accumulation are on, so every
    random stream (data order, augmentation, global torch RNG) has to line up; the stop
    is off the checkpoint grid, so the resumed run must also fast-forward its stream.
    """
    extra = {
        "augment": {"crop": {"p": 0.3}, "photometric": {"p": 0.3}, "low_res": {"p": 0.3}},
        "head": {"params": {"scale": 16, "margin": 0.2, "sample_rate": 0.5}},
        "train": {"epochs": 4, "device": "cpu", "grad_accum": 2},
        "checkpoint": {"every_steps": 8},
    }
    straight = _cfg(world, tmp_path / "a", **extra)
    straight.train.output_dir = str(tmp_path / "a")
    chunked = straight.model_copy(deep=True)
    chunked.train.output_dir = str(tmp_path / "b")

    a = train(straight)
    part = train(chunked, stop_after=5)
    assert not part.completed and part.model_dir is None and part.global_step == 5
    b = train(chunked, resume="latest")
    assert a.global_step == b.global_step == 16

    wa = load_file(a.checkpoint / "model.safetensors")
    wb = load_file(b.checkpoint / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the resumed run's log continues the interrupted one without duplicate steps
    steps = [int(r["step"]) for r in _rows(tmp_path / "b" / "metrics.csv")]
    assert steps == sorted(set(steps)) and steps[-1] == 16


def test_class_count_must_match_manifest(world, tmp_path):
    cfg = _cfg(world, tmp_path / "run", data={"num_classes": IDS + 1})
    with pytest.raises(ConfigError, match=r"data.num_classes: config says 9 .* has 8 identities"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_empty_or_missing_shards_are_refused(world, tmp_path):
    import shutil

    data = tmp_path / "ds"
    shutil.copytree(world["data"], data)
    shard = sorted((data / "shards").iterdir())[1]
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w").close()  # a valid but empty tar
    shard.write_bytes(buf.getvalue())
    cfg = _cfg(world, tmp_path / "run", data={"train": str(data)})
    with pytest.raises(ShardError, match=shard.name):
        train(cfg)
    shard.unlink()
    with pytest.raises(ShardError, match=f"{shard.name}: shard listed in the manifest is missing"):
        train(cfg)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(world, tmp_path):
    cfg = _cfg(
        world,
        tmp_path / "run",
        optim={"lr": 1e30},
        schedule={"warmup_epochs": 0},
        train={"clip_grad_norm": None},
        checkpoint={"every_steps": 1},
        logging={"every_steps": 1},
    )
    with pytest.raises(
        TrainingDiverged, match=r"NaN/inf at step (\d+).*last good checkpoint"
    ) as err:
        train(cfg)
    bad = int(err.value.args[0].split("at step ")[1].split()[0])
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert saved and saved[-1] == f"step-{bad - 1:08d}"  # nothing at or after the NaN step
    assert saved[-1] in str(err.value)
    assert not (tmp_path / "run" / "model").exists()


def test_resume_refuses_another_architecture(world, tmp_path):
    train(_cfg(world, tmp_path / "run"), stop_after=16)
    other = _cfg(world, tmp_path / "run", model={"embedding_dim": 32})
    with pytest.raises(InputError, match=r"different model.embedding_dim"):
        train(other, resume="latest")


def test_cli_train_with_overrides(world, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"data: {{train: {world['data']}, batch_size: 8, num_workers: 0}}\n"
        f"model: {{backbone: tiny, input_size: {SIZE}, embedding_dim: 32}}\n"
        f"train: {{output_dir: {tmp_path / 'run'}, device: cpu}}\n"
        "logging: {progress: false}\n"
    )
    code = cli_main(["recognition", "train", str(cfg), "--set", "train.max_steps=3", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert '"global_step": 3' in out and '"completed": true' in out
    assert (tmp_path / "run" / "model" / "config.json").is_file()

    code = cli_main(["recognition", "train", str(cfg), "--set", "optim.lr=-1"])
    err = capsys.readouterr().err
    assert code == 1 and "optim.lr: must be > 0" in err


@pytest.mark.parametrize("name", ["arcface_torch_r50_casia.yaml", "world_tiny.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(REPO / "configs" / "recognition" / name, TrainConfig)
    assert cfg.optim.weight_decay == pytest.approx(5e-4)


def test_fresh_run_refuses_a_directory_with_checkpoints(world, tmp_path):
    train(_cfg(world, tmp_path / "run"), stop_after=16)
    with pytest.raises(InputError, match=r"holds checkpoints of an earlier run"):
        train(_cfg(world, tmp_path / "run"))


def test_onnx_teacher_pulls_the_student_towards_its_embeddings(world, tmp_path):
    """Distillation from an ONNX teacher (converted to torch): the student trained with it
    ends closer to the teacher's embeddings than the same run without it."""
    from synthface.recognition import create_backbone, export_onnx, load_recognizer
    from synthface.recognition.onnx_torch import onnx_to_torch

    torch.manual_seed(3)
    teacher_path = tmp_path / "teacher.onnx"
    export_onnx(
        create_backbone("tiny", input_size=SIZE, embedding_dim=64),
        teacher_path,
        allow_any_size=True,
    )
    short = {"epochs": 2, "device": "cpu"}
    plain = train(_cfg(world, tmp_path / "plain", train=short))
    taught = train(
        _cfg(world, tmp_path / "taught", train=short,
             distill={"teacher": str(teacher_path), "weight": 10.0})
    )  # fmt: skip
    teacher = onnx_to_torch(teacher_path)
    from synthface.pipeline.shards import iter_samples

    images = np.stack([s["image"] for s in iter_samples(world["data"])][:64])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1

    def agreement(model_dir) -> float:
        with torch.no_grad():
            return float(
                torch.nn.functional.cosine_similarity(
                    load_recognizer(model_dir)(x), teacher(x), dim=1
                ).mean()
            )

    near, far = agreement(taught.model_dir), agreement(plain.model_dir)
    assert near > 0.3 and near > far + 0.2, (near, far)
    bad = _cfg(world, tmp_path / "bad", train=short, distill={"teacher": str(teacher_path)})
    bad.model.embedding_dim = 32
    with pytest.raises(ConfigError, match="64-d embeddings"):
        train(bad)


@pytest.fixture(scope="module")
def stopped(world, tmp_path_factory) -> Path:
    """A run stopped after 32 steps: checkpoints at 16 and 32, metrics logged every 8."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before the autouse _one_thread
    try:
        train(_cfg(world, out), stop_after=32)
    finally:
        torch.set_num_threads(threads)
    return out


def _copy(stopped: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(stopped, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("random_states_0.pkl", lambda p: p.write_bytes(b"not a torch file")),
        ("random_states_0.pkl", lambda p: p.write_bytes(p.read_bytes()[:200])),
        ("random_states_0.pkl", lambda p: p.unlink()),
        ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:-64])),
        ("optimizer.bin", lambda p: p.write_bytes(p.read_bytes()[:-64])),
        ("trainer_state.json", lambda p: p.unlink()),
    ],
    ids=["rng-garbage", "rng-truncated", "rng-missing", "weights", "optimizer", "state"],
)
def test_resume_stops_naming_a_damaged_checkpoint_file(world, stopped, tmp_path, name, damage):
    """accelerate would only log "Could not load random states" and carry on differently."""
    run = _copy(stopped, tmp_path)
    target = run / "checkpoints" / "step-00000032" / name
    damage(target)
    cfg = _cfg(world, run)
    with pytest.raises(InputError) as err:
        train(cfg, resume="latest")
    message = str(err.value)
    assert name in message and "--resume-allow-partial" in message and "\n" not in message


def test_resume_allow_partial_falls_back_and_metrics_are_appended(world, stopped, tmp_path, caplog):
    run = _copy(stopped, tmp_path)
    logged = (run / "metrics.csv").read_text()
    assert [int(r["step"]) for r in _rows(run / "metrics.csv")] == [8, 16, 24, 32]
    (run / "checkpoints" / "step-00000032" / "random_states_0.pkl").write_bytes(b"garbage")
    result = train(
        _cfg(world, run, train={"max_steps": 40}), resume="latest", resume_allow_partial=True
    )
    assert result.completed and result.global_step == 40
    assert "dropping checkpoint step-00000032" in caplog.text
    assert "resuming from step-00000016, steps 17..32 are trained again" in caplog.text
    # the interrupted attempt's rows stay; the resumed run's rows follow them
    text = (run / "metrics.csv").read_text()
    assert text.startswith(logged)
    assert [int(r["step"]) for r in _rows(run / "metrics.csv")] == [8, 16, 24, 32, 24, 32, 40]
