"""Bad input by category: each case ends in one clear line, never a hang, a crash or a
silently different result. (Tar bytes: ``test_tar_fuzz.py``; resume: ``test_training.py``
and ``test_generators_training.py``; flows: ``test_flows.py``.)

Test names start with their category (``manifest``, ``image``, ``yaml``, ``memory``,
``output``, ``claim``, ``perms``); ``docs/reliability.md`` counts them by that prefix.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from synthface.generators.dataset.config import GenerateConfig
from synthface.pipeline.cli import main as cli_main
from synthface.pipeline.config import load_config
from synthface.pipeline.errors import ConfigError, InputError, ShardError, SynthfaceError
from synthface.pipeline.limits import PIXELS_ENV
from synthface.pipeline.shards import (
    begin_dataset,
    decode_image,
    iter_samples,
    load_manifest,
)
from synthface.pipeline.shards.folder import from_folder, to_folder
from synthface.pipeline.shards.verify import verify_dataset
from tests.test_core import _write
from tests.test_shards_support import make_dataset, make_folder

# ---------------------------------------------------------------- opened-file recorder

_OPENED: list[str] | None = None


def _audit(event: str, args) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], str | bytes | Path):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _opened_during(fn) -> tuple[list[str], BaseException | None]:
    global _OPENED
    _OPENED = []
    try:
        fn()
        error = None
    except BaseException as exc:
        error = exc
    finally:
        opened, _OPENED = _OPENED, None
    return opened, error


# ---------------------------------------------------------------- manifest names

BAD_NAMES = [
    ("shard", "/etc/passwd"),
    ("shard", "../outside.tar"),
    ("shard", "shards/../../outside.tar"),
    ("shard", ".."),
    ("shard", ""),
    ("array", "/etc/passwd"),
    ("array", "../outside.npy"),
    ("wids", "../outside.json"),
]


@pytest.mark.parametrize(("where", "name"), BAD_NAMES)
def test_manifest_name_leaving_the_dataset_is_refused_unopened(tmp_path, where, name):
    ds = tmp_path / "ds"
    make_dataset(ds, identities=4, max_samples=6)
    (tmp_path / "outside.tar").write_bytes(b"secret")
    manifest = json.loads((ds / "dataset.json").read_text())
    split = manifest["splits"]["train"]
    if where == "shard":
        split["shards"][0]["name"] = name
    elif where == "array":
        split["arrays"]["identities"]["file"] = name
    else:
        split["wids_index"] = name
    (ds / "dataset.json").write_text(json.dumps(manifest))

    for reader in (lambda: list(iter_samples(ds)), lambda: load_manifest(ds)):
        opened, error = _opened_during(reader)
        assert isinstance(error, ShardError), error
        assert "not a file name inside the dataset" in str(error) and "\n" not in str(error)
        assert not [p for p in opened if "outside" in p or p.startswith("/etc")], opened
    report = verify_dataset(ds)
    assert not report["ok"] and "not a file name inside the dataset" in report["problems"][0]


def test_manifest_record_naming_another_file_does_not_vouch(tmp_path):
    from synthface.pipeline.shards import completed_shards

    ds = tmp_path / "ds"
    make_dataset(ds, identities=4, max_samples=6)
    shard = ds / "shards" / "train-000000.tar"
    shard.rename(tmp_path / "outside.tar")  # same bytes, outside the dataset
    record = ds / "records" / "train-000000.json"
    data = json.loads(record.read_text())
    data["name"] = "../../outside.tar"
    record.write_text(json.dumps(data))
    assert 0 not in completed_shards(ds)


# ---------------------------------------------------------------- images


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR declaring ``width x height`` and one tiny IDAT: the
    shape of a decompression bomb (bytes: ~100, pixels once decoded: width * height)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(50000, 50000), (8193, 8192), (1, 70_000_000)])
def test_image_bomb_is_refused_with_its_name(size):
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=rf"bomb\.png: image is {size[0]}x{size[1]}"):
        decode_image(_png_header_only(*size), "bomb.png")
    assert time.perf_counter() - t0 < 1.0  # refused from the header, not after decoding


def test_image_pixel_limit_is_configurable(monkeypatch):
    from synthface.pipeline.shards import encode_image
    from tests.test_shards_support import tiny_image

    png = encode_image(tiny_image(0), "png")  # 16 x 16
    assert decode_image(png).shape == (16, 16, 3)
    monkeypatch.setenv(PIXELS_ENV, "255")
    with pytest.raises(InputError, match=r"small\.png: image is 16x16 = 256 pixels.*limit of 255"):
        decode_image(png, "small.png")
    monkeypatch.setenv(PIXELS_ENV, "lots")
    with pytest.raises(ConfigError, match=PIXELS_ENV):
        decode_image(png)


def test_image_bomb_in_a_folder_import_names_the_file(tmp_path, capsys):
    src = make_folder(tmp_path / "src")
    (src / "bob" / "img9.png").write_bytes(_png_header_only(40000, 40000))
    code = cli_main(["shards", "from-folder", str(src), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert f"{src / 'bob' / 'img9.png'}: image is 40000x40000" in err
    assert not (tmp_path / "out").exists()  # no half-written output either (claim released)


def test_image_bomb_in_a_verification_bin_names_the_bin(tmp_path):
    from synthface.pipeline.formats.verification_bin import write_bin
    from synthface.recognition.evaluation.embed import decode_images

    write_bin(tmp_path / "lfw.bin", [_png_header_only(30000, 30000)] * 2, [True])
    from synthface.pipeline.formats.verification_bin import read_bin

    blobs, _ = read_bin(tmp_path / "lfw.bin")
    with pytest.raises(InputError, match=r"lfw\.bin: image 0: image is 30000x30000"):
        decode_images(blobs, (112, 112), source=str(tmp_path / "lfw.bin"))


def test_image_limit_flag_on_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(PIXELS_ENV, "1000000")  # restored after the test; the flag sets it
    src = make_folder(tmp_path / "src")
    code = cli_main(
        ["--max-image-pixels", "100", "shards", "from-folder", str(src), str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 1 and "above the limit of 100" in err


# ---------------------------------------------------------------- YAML configs


def test_yaml_billion_laughs_is_refused_quickly_and_briefly(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = _write(tmp_path, "\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(path, GenerateConfig)
    assert time.perf_counter() - t0 < 1.0
    assert str(err.value) == (
        f"{path}: line 2: alias *a: aliases are not allowed in configs (write the value out)"
    )


YAML_CASES = [
    ("identities:\n  count: 3\n  count: 4\n", r"line 3: duplicate key 'count' \(first at line 2\)"),
    (
        "identities:\n  count: true\n",
        r"line 2: identities.count: must be an integer, not a boolean",
    ),
    ("identities:\n  count: '12'\n", r"identities.count: must be an integer, not a string"),
    ("identities:\n  count: yes\n", r"identities.count: must be an integer, not a boolean"),
    (
        "output:\n  store_embeddings: 1\n",
        r"output.store_embeddings: must be a boolean, not a number",
    ),
    (
        "output:\n  store_embeddings: 'false'\n",
        r"store_embeddings: must be a boolean, not a string",
    ),
    (
        "runner:\n  retry_delay_seconds: '2'\n",
        r"retry_delay_seconds: must be a number, not a string",
    ),
    ("output:\n  dir: 5\n", r"output.dir: must be a string, not a number"),
    ("name: " + "[" * 600 + "]" * 600 + "\n", r"invalid YAML: nested too deeply"),
    ("identities: {count: 3\n", r"invalid YAML"),
]


@pytest.mark.parametrize(("text", "message"), YAML_CASES)
def test_yaml_refusals_are_one_line_naming_file_and_line(tmp_path, text, message):
    path = _write(tmp_path, text + "generator: {checkpoint: g}\n")  # the one required key
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path, GenerateConfig)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_yaml_quoted_values_are_cut_short(tmp_path):
    path = _write(
        tmp_path, "generator: {checkpoint: g}\nidentities:\n  count: '" + "9x" * 50000 + "'\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, GenerateConfig)
    assert len(str(err.value)) < 300 and "(100002 characters)" in str(err.value)


def test_yaml_set_errors_name_the_override_not_the_file(tmp_path):
    path = _write(tmp_path, "identities:\n  count: 3\ngenerator: {checkpoint: g}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, GenerateConfig, ["identities.count=-3", "output.dir=*x"])
    lines = str(err.value).splitlines()
    assert lines == [
        "--set output.dir=*x: line 1: alias *x: aliases are not allowed in configs (write the value out)"
    ]
    with pytest.raises(ConfigError) as err:
        load_config(path, GenerateConfig, ["identities.count=-3"])
    assert str(err.value) == "--set identities.count=-3: identities.count: must be >= 1 (got -3)"


def test_yaml_valid_configs_still_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(root.glob("*/*.yaml")):
        from synthface.pipeline.config import load_any_config

        load_any_config(path)


# ---------------------------------------------------------------- memory estimates


def test_memory_tammes_plan_beyond_the_machine_is_refused_before_allocating():
    from synthface.generators.id3.anchors import tammes_anchors

    t0 = time.perf_counter()
    with pytest.raises(
        ConfigError, match=r"10000000 identities x 512 dims .* needs about \d+\.\d GiB"
    ):
        tammes_anchors(10_000_000, 512)
    assert time.perf_counter() - t0 < 2.0


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    from tests.flows_helpers import make_tiny_models

    root = tmp_path_factory.mktemp("models")
    make_tiny_models(root)
    return root


def test_memory_generation_plan_is_refused_before_the_output_is_claimed(models, tmp_path):
    from synthface.generators.dataset import prepare_generation
    from tests.flows_helpers import tiny_config

    cfg = tiny_config(models, tmp_path / "ds", identities={"count": 10_000_000})
    with pytest.raises(ConfigError, match=r"needs about .* GiB of memory, this machine has"):
        prepare_generation(cfg)
    assert not (tmp_path / "ds").exists()


def test_memory_recognizer_head_beyond_the_machine_is_refused():
    import torch

    from synthface.recognition.config import TrainConfig
    from synthface.recognition.training.loop import _check_head_memory

    cfg = TrainConfig.model_validate({"data": {"train": "x"}, "model": {"embedding_dim": 512}})
    _check_head_memory(cfg, 10_000, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"margin head for 100000000 identities x 512 dims"):
        _check_head_memory(cfg, 100_000_000, torch.device("cpu"))


# ---------------------------------------------------------------- output inside input


def test_output_inside_the_source_folder_is_refused_before_writing(tmp_path):
    src = make_folder(tmp_path / "faces")
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    with pytest.raises(InputError, match=r"output .*faces/shards is inside source"):
        from_folder(src, src / "shards")
    with pytest.raises(InputError, match="is inside source"):
        from_folder(src, src)
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


def test_output_inside_the_dataset_is_refused_for_export(tmp_path):
    ds = tmp_path / "ds"
    make_dataset(ds, identities=2)
    with pytest.raises(InputError, match="is inside dataset"):
        to_folder(ds, ds / "images")
    assert not (ds / "images").exists()


def test_output_training_into_the_dataset_is_refused(tmp_path):
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.training import train

    cfg = TrainConfig.model_validate(
        {
            "data": {"train": str(tmp_path / "ds")},
            "train": {"output_dir": str(tmp_path / "ds" / "run")},
        }
    )
    with pytest.raises(InputError, match=r"train.output_dir .* is inside data.train"):
        train(cfg)


def test_output_generation_into_the_checkpoint_is_refused(models):
    from synthface.generators.dataset import prepare_generation
    from tests.flows_helpers import tiny_config

    cfg = tiny_config(models, models / "generator" / "ds")
    with pytest.raises(InputError, match=r"output.dir .* is inside generator.checkpoint"):
        prepare_generation(cfg)
    assert not (models / "generator" / "ds").exists()


# ---------------------------------------------------------------- claims on an output


def test_claim_failed_run_before_any_shard_leaves_the_directory_reusable(tmp_path):
    src = make_folder(tmp_path / "src")
    (src / "alice" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"notes\.txt: not an image file"):
        from_folder(src, out)
    assert list(out.iterdir()) == []  # claim released: nothing left behind
    # the rerun with another flag (another config hash) may use the same directory
    manifest = from_folder(src, out, skip_non_images=True)
    assert manifest["splits"]["train"]["num_identities"] == 3


def test_claim_of_an_abandoned_empty_run_is_taken_over_not_a_running_one(tmp_path):
    import socket
    import subprocess

    out = tmp_path / "out"
    owner = out / "records" / ".train-owner.json"
    begin_dataset(out, config={"run": 1})
    other = subprocess.Popen(["sleep", "30"])  # stands in for the claiming run
    try:
        owner.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(ShardError, match=rf"by a running process \(pid {other.pid}\)"):
            begin_dataset(out, config={"run": 2})
    finally:
        other.kill()
        other.wait()
    # the claimant died before writing anything: its claim is taken over
    assert begin_dataset(out, config={"run": 2})
    pending = json.loads((out / "records" / "train-config.json").read_text())
    assert pending["config"] == {"run": 2}


def test_claim_is_atomic_between_concurrent_runs(tmp_path, monkeypatch):
    """Run A checks the directory, then stalls before recording its claim; run B, started
    meanwhile with another config, must not also claim the directory."""
    import synthface.pipeline.shards.manifest as manifest

    out = tmp_path / "out"
    stalled, release = threading.Event(), threading.Event()
    real_write = manifest.atomic_write_bytes

    def slow_write(path, data, **kw):
        if b'"run": 1' in data:
            stalled.set()
            release.wait(5)
        return real_write(path, data, **kw)

    monkeypatch.setattr(manifest, "atomic_write_bytes", slow_write)
    results: dict[str, object] = {}

    def run(name: str, config: dict) -> None:
        try:
            results[name] = begin_dataset(out, config=config)
        except SynthfaceError as exc:
            results[name] = exc

    a = threading.Thread(target=run, args=("a", {"run": 1}))
    a.start()
    assert stalled.wait(5)
    b = threading.Thread(target=run, args=("b", {"run": 2}))
    b.start()
    time.sleep(0.3)  # B is now either waiting for the lock or (check-then-write) done
    release.set()
    a.join(5), b.join(5)
    assert isinstance(results["a"], str)
    # B saw A's claim; nothing of A is written yet, so B may take it over — but only after
    # A's claim is complete, never interleaved: the claim on disk is one of the two whole.
    pending = json.loads((out / "records" / "train-config.json").read_text())
    winner = {1: "a", 2: "b"}[pending["config"]["run"]]
    assert winner == "b" and isinstance(results["b"], str)


# ---------------------------------------------------------------- permissions


def test_perms_exports_checkpoints_and_embeddings_follow_the_umask(tmp_path):
    from synthface.generators.base import create_generator
    from synthface.generators.config import GeneratorConfig
    from synthface.recognition import create_backbone, save_recognizer
    from synthface.recognition.embed_files import embed_to_npy

    old = os.umask(0o022)
    try:
        model = create_backbone("tiny", input_size=16, embedding_dim=8, widths=(4, 4, 8, 8))
        rec = save_recognizer(model.eval(), tmp_path / "rec")
        src = make_folder(tmp_path / "faces", names=("a",), per_identity=2)
        embed_to_npy(rec, tmp_path / "emb" / "E.npy", images=src)
        gen_cfg = GeneratorConfig.model_validate(
            {
                "image_size": 16,
                "unet": {"block_out_channels": [8, 8], "norm_num_groups": 4,
                         "cross_attention_dim": 8, "attention_head_dim": 2},
                "conditioning": {"identity_dim": 8, "identity_tokens": 1, "mlp_hidden": [8]},
            }
        )  # fmt: skip
        create_generator("plain", gen_cfg).save_pretrained(tmp_path / "gen")
    finally:
        os.umask(old)
    files = [
        *(tmp_path / "rec").iterdir(),
        *(tmp_path / "emb").iterdir(),
        *(tmp_path / "gen").rglob("*"),
    ]
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    want = {k: "0o755" if (tmp_path / k).is_dir() else "0o644" for k in modes}
    assert modes == want
    assert not [p for p in tmp_path.rglob(".*") if p.name != ".claim.lock"]  # no temporaries
    assert np.load(tmp_path / "emb" / "E.npy").shape == (2, 8)
