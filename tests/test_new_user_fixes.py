"""What a new user ran into (issue 24): a $SYNTHFACE_HOME that does not exist yet, reports of
scores that separate perfectly, and progress bars that ignored --quiet."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from synthface.pipeline.cli import main
from synthface.pipeline.errors import InputError
from synthface.pipeline.progress import QUIET_ENV


def test_a_missing_synthface_home_gets_its_prefect_folder(tmp_path):
    from synthface.flows.defaults import prepare_prefect_env

    env = {"SYNTHFACE_HOME": str(tmp_path / "not" / "yet")}
    assert prepare_prefect_env(env) is None
    assert (tmp_path / "not" / "yet" / ".prefect").is_dir()
    assert env["PREFECT_HOME"] == str(tmp_path / "not" / "yet" / ".prefect")


def test_an_impossible_prefect_home_is_one_line(tmp_path):
    from synthface.flows.defaults import prepare_prefect_env

    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match=r"PREFECT_HOME=.*file/\.prefect: cannot create") as err:
        prepare_prefect_env({"SYNTHFACE_HOME": str(tmp_path / "file")})
    assert "\n" not in str(err.value)


# --- scores that separate perfectly --------------------------------------------------------


def test_verify_report_with_perfectly_separated_scores(tmp_path, capsys):
    rng = np.random.default_rng(0)
    ids = rng.normal(size=(10, 16)).astype(np.float32)
    np.save(tmp_path / "E.npy", np.concatenate([ids, ids + 1e-3]))  # row i+10: a copy of i
    lines = [f"{i} {i + 10} 1" for i in range(10)] + [f"{i} {(i + 1) % 10} 0" for i in range(10)]
    (tmp_path / "P.txt").write_text("\n".join(lines) + "\n")
    code = main(
        ["eval", "verify", "--embeddings", str(tmp_path / "E.npy"), "--pairs",
         str(tmp_path / "P.txt"), "--metric", "both", "--json", "--out", str(tmp_path / "rep")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    results = json.loads(capsys.readouterr().out)["results"]
    assert all(r["roc_auc"] == 1.0 and r["eer"] == 0.0 for r in results)  # perfectly separated
    for name in ("metrics.json", "report.md", "roc.png", "det.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0


def test_ijb_report_with_perfectly_separated_scores(tmp_path, capsys):
    """Meta files named as docs/evaluation.md says: lower-case target, in META/meta/."""
    meta = tmp_path / "IJB_C" / "meta"
    meta.mkdir(parents=True)
    names, tids, mids, feats = [], [], [], []
    for t in range(12):  # templates 2k and 2k+1 are identity k: one-hot features
        for k in range(2):
            names.append(f"{t}_{k}.jpg")
            tids.append(t)
            mids.append(t * 10 + k)
            feats.append(np.eye(8, dtype=np.float32)[t // 2])
    (meta / "ijbc_face_tid_mid.txt").write_text(
        "".join(f"{n} {t} {m}\n" for n, t, m in zip(names, tids, mids))
    )
    pairs = [(a, b, int(a // 2 == b // 2)) for a in range(12) for b in range(a + 1, 12)]
    (meta / "ijbc_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {lab}\n" for a, b, lab in pairs)
    )
    np.save(tmp_path / "F.npy", np.stack(feats))
    code = main(
        ["eval", "ijb", "--meta-dir", str(tmp_path / "IJB_C"), "--target", "IJBC",
         "--features", str(tmp_path / "F.npy"), "--no-flip", "--json", "--out",
         str(tmp_path / "rep")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert out["num_pairs"] == len(pairs) and out["tar_at_far"]["0.1"] == 1.0
    for name in ("metrics.json", "report.md", "roc.png", "det.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0


def test_det_plot_says_perfect_separation_in_words(tmp_path):
    from synthface.recognition.evaluation.report import plot_curves

    issame = np.array([True] * 5 + [False] * 5)
    plot_curves(tmp_path / "c.png", {"perfect": (issame, np.r_[np.ones(5), np.zeros(5)])})
    assert (tmp_path / "c.png").stat().st_size > 0


# --- --quiet ---------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    assert main(["world", "make", str(root / "train"), "--identities", "4",
                 "--per-identity", "4", "--size", "32"]) == 0  # fmt: skip
    return root / "train"


def _train(world, out, *flags) -> int:
    return main(
        [*flags, "recognition", "train", "synthface:recognition/world_tiny.yaml",
         "--set", f"data.train={world}", "--set", f"train.output_dir={out}",
         "--set", "train.max_steps=3", "--set", "data.batch_size=4",
         "--set", "data.num_workers=0", "--set", "data.shuffle_buffer=16",
         "--set", "model.input_size=32", "--set", "validation.sets=[]"]
    )  # fmt: skip


def test_training_bar_only_on_a_terminal_and_never_with_quiet(world, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch, "get_num_threads", torch.get_num_threads)
    monkeypatch.setenv(QUIET_ENV, "0")  # restored afterwards: main() sets it for --quiet
    shown = _Terminal()
    monkeypatch.setattr("sys.stderr", shown)
    assert _train(world, tmp_path / "a") == 0
    assert "step" in shown.getvalue() and "3/3" in shown.getvalue()  # the bar can be seen

    quiet = _Terminal()
    monkeypatch.setattr("sys.stderr", quiet)
    assert _train(world, tmp_path / "b", "--quiet") == 0
    assert "3/3" not in quiet.getvalue() and "\r" not in quiet.getvalue()

    monkeypatch.setenv(QUIET_ENV, "0")
    piped = io.StringIO()  # not a terminal: logs and pipes get no bar either
    monkeypatch.setattr("sys.stderr", piped)
    assert _train(world, tmp_path / "c") == 0
    assert "3/3" not in piped.getvalue() and "\r" not in piped.getvalue()
