"""``privacy-benchmark`` as plain functions; the Prefect flow (``flows/privacy.py``) orders them.

For every method row: train its stages with the shared recipe (the project's trainer,
``model.protection``), verify on the world protocols, attack; then one table with the
unprotected baseline of the same run. Each step keeps its result next to its outputs
(``OUT/methods/<name>/{stage}/train.json``, ``eval.json``, ``attack.json``) keyed by what it
depends on, so a rerun skips finished work, an interrupted training resumes from its
checkpoint, and a stage whose configuration changed starts over.

Goal columns: ``Δ acc`` is the method's mean protocol accuracy minus the baseline's, in
points (goal: >= -1); the reconstruction attack is "near chance" when the judge identifies
at most ``NEAR_CHANCE`` x chance of the targets (5 of 300 targets: one success is what
chance gives, five or more happen by chance with probability 0.4 %).
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthface.pipeline.atomic import atomic_write_bytes, atomic_write_json
from synthface.pipeline.config import apply_overrides, canonical_json, load_config, validate_config
from synthface.pipeline.errors import ConfigError, InputError
from synthface.recognition.config import TrainConfig
from synthface.recognition.privacy.config import MethodSpec, PrivacyBenchmarkConfig

NEAR_CHANCE = 5.0
Log = Callable[[str], None]


def _key(data: Any) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------ plan


def check_inputs(cfg: PrivacyBenchmarkConfig) -> None:
    """Every input exists and every row builds, before any training starts."""
    from synthface.pipeline.shards import split_manifest
    from synthface.recognition.privacy.attacks import dataset_split

    for path in (cfg.train_data, cfg.attack.data):
        split_manifest(path, dataset_split(path))  # ShardError naming a folder that is not one
    for what, path in [("protocols", p) for p in cfg.protocols] + [
        ("attack.targets", cfg.attack.targets)
    ]:
        if not Path(path).is_file():
            raise InputError(f"{what}: {path}: no such verification .bin file")
    from synthface.recognition.privacy.methods import PROTECTIONS
    from synthface.recognition.training import build_model

    for spec in cfg.methods:
        for _, stage in stage_configs(cfg, spec, roi=None):
            prot = stage.model.protection
            if prot is not None:  # earlier stages do not exist yet: build without them
                skip = PROTECTIONS.get(prot.name).init_only
                params = {k: v for k, v in prot.params.items() if k not in skip}
                stage = stage.model_copy(
                    update={
                        "model": stage.model.model_copy(
                            update={"protection": prot.model_copy(update={"params": params})}
                        )
                    }
                )
            build_model(stage, 2)  # unknown names and arguments fail here, in one line


def recipe(cfg: PrivacyBenchmarkConfig, overrides: list[str] | None = None) -> TrainConfig:
    """The shared recipe on the benchmark's training data; verification happens here."""
    from synthface.recognition.privacy.attacks import dataset_split

    base = load_config(cfg.recipe, TrainConfig, [*cfg.recipe_overrides, *(overrides or [])])
    data = base.model_dump(mode="json")
    data["data"]["train"] = cfg.train_data
    data["data"]["split"] = dataset_split(cfg.train_data)
    data["data"]["num_classes"] = None
    data["data"]["view"] = train_view(cfg)
    data["validation"]["sets"] = []
    return validate_config(data, TrainConfig, f"{cfg.recipe} (privacy recipe)")


def train_view(cfg: PrivacyBenchmarkConfig) -> str | None:
    """The view every method trains through: ``train_view`` where ``train_data`` has it.

    A generated set (QC audited at finalize) must have it: training on what QC left out
    would let leaked identities into every protected model. Data QC never audited (world
    renders, real shards) has no views and is read whole.
    """
    from synthface.pipeline.qc.views import view_path
    from synthface.pipeline.shards import split_manifest
    from synthface.recognition.privacy.attacks import dataset_split

    if cfg.train_view is None:
        return None
    path = view_path(cfg.train_data, cfg.train_view)
    if path.is_file():
        return cfg.train_view
    audited = split_manifest(cfg.train_data, dataset_split(cfg.train_data)).get("extra", {})
    if isinstance(audited, dict) and audited.get("qc"):
        raise InputError(
            f"train_view: {path}: no such view in a QC-audited (generated) set; write it "
            "with synthface qc view, or set train_view: null to train on every sample"
        )
    return None


def method_dir(cfg: PrivacyBenchmarkConfig, name: str) -> Path:
    return Path(cfg.output_dir) / "methods" / name


def _with_protection(
    base: TrainConfig, out: Path, protection: str, backbone: str, backbone_params, params, epochs
) -> TrainConfig:
    data = base.model_dump(mode="json")
    data["model"]["backbone"] = backbone
    data["model"]["params"] = dict(backbone_params)
    data["model"]["protection"] = {"name": protection, "params": params}
    data["train"]["output_dir"] = str(out)
    data["train"]["epochs"] = epochs
    return validate_config(data, TrainConfig, f"privacy stage {out}")


def _one_stage(spec: MethodSpec, what: str) -> None:
    for key in ("pretrain_params", "pretrain_overrides"):
        if getattr(spec, key):
            raise ConfigError(f"methods.{spec.name}.{key}: {what} has one stage")


def stage_configs(
    cfg: PrivacyBenchmarkConfig, spec: MethodSpec, roi: list | None
) -> list[tuple[str, TrainConfig]]:
    """(stage name, training config) of a row, in training order."""
    from synthface.recognition.privacy.methods import PROTECTIONS

    base = recipe(cfg)
    data = apply_overrides(base.model_dump(mode="json"), spec.overrides)
    base = validate_config(data, TrainConfig, f"methods.{spec.name}.overrides")
    out = method_dir(cfg, spec.name)
    if spec.protection is None:
        _one_stage(spec, "the unprotected baseline")
        data = base.model_dump(mode="json")
        data["train"]["output_dir"] = str(out / "model")
        return [("model", validate_config(data, TrainConfig, spec.name))]
    cls = PROTECTIONS.get(spec.protection)
    params = dict(spec.params)
    if roi is not None and "roi_landmarks" in inspect.signature(cls).parameters:
        params.setdefault("roi_landmarks", roi)
    epochs = base.train.epochs * cls.epoch_factor(params)
    stages = []
    first = cls.pretrain_stage(base.model.backbone, base.model.params, params)
    if first is not None:
        stage_out = out / "stage1"
        data = apply_overrides(base.model_dump(mode="json"), spec.pretrain_overrides)
        pre = validate_config(data, TrainConfig, f"methods.{spec.name}.pretrain_overrides")
        stages.append(
            (
                "stage1",
                _with_protection(
                    pre,
                    stage_out,
                    first.protection,
                    first.backbone,
                    first.backbone_params,
                    {**first.params, **spec.pretrain_params},
                    pre.train.epochs,
                ),
            )
        )
        params[first.argument] = str(stage_out / "model")
    else:
        _one_stage(spec, spec.protection)
    name = "stage2" if first is not None else "model"
    stages.append(
        (
            name,
            _with_protection(
                base,
                out / name,
                spec.protection,
                base.model.backbone,
                base.model.params,
                params,
                epochs,
            ),
        )
    )
    return stages


def region_of_interest(cfg: PrivacyBenchmarkConfig) -> list | None:
    from synthface.recognition.privacy.attacks import dataset_split
    from synthface.recognition.privacy.roi import mean_landmarks

    if not cfg.roi_from_data:
        return None
    return mean_landmarks(cfg.train_data, split=dataset_split(cfg.train_data))


# ------------------------------------------------------------------ training


def _stage_key(stage: TrainConfig, upstream: str | None) -> str:
    """The stage's config and the key of the stage it starts from (a second stage names
    its first by path only, so a retrained first stage must change the second's key)."""
    return _key({"config": stage.model_dump(mode="json"), "upstream": upstream})


STARTED = "stage_key.json"  # written before a stage trains: which run its checkpoints belong to


def _finished(stage: TrainConfig, upstream: str | None = None) -> dict | None:
    out = Path(stage.train.output_dir)
    done = _read_json(out / "train.json")
    model = _read_json(out / "model" / "config.json")
    if done and model and done.get("key") == _stage_key(stage, upstream):
        return done
    return None


def train_stage(stage: TrainConfig, log: Log = print, upstream: str | None = None) -> dict:
    """Train (or resume, or skip when finished) one stage; returns steps and seconds.

    ``upstream``: the key of the stage whose model this one loads (retrained -> retrain).
    """
    from synthface.recognition.training import train

    done = _finished(stage, upstream)
    if done is not None:
        log(f"{stage.train.output_dir}: already trained ({done['steps']} steps), skipped")
        return done
    out = Path(stage.train.output_dir)
    key = _stage_key(stage, upstream)
    # Resume only a run of this very stage. The trainer resumes any checkpoint of the same
    # architecture, so a changed schedule would continue the old run's weights, and a
    # changed first stage would find the old second stage finished and keep it.
    started = _read_json(out / STARTED)
    if out.is_dir() and any(out.iterdir()) and (started or {}).get("key") != key:
        log(f"{out}: holds a run of another configuration; starting over")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / STARTED, {"key": key})
    t0 = time.perf_counter()
    result = train(stage, resume="latest")
    if not result.completed:
        raise RuntimeError(f"{stage.train.output_dir}: training stopped before the end")
    summary = {
        "key": key,
        "steps": result.global_step,
        "seconds": round(time.perf_counter() - t0, 1),
        "model_dir": str(out / "model"),
        "metrics": result.metrics,
    }
    atomic_write_json(out / "train.json", summary)
    return summary


def train_method(
    cfg: PrivacyBenchmarkConfig, name: str, roi: list | None, log: Log = print
) -> dict:
    """Every stage of one row; the model directory of the last is the method's model."""
    spec = next(m for m in cfg.methods if m.name == name)
    stages = {}
    upstream = None
    for stage_name, stage in stage_configs(cfg, spec, roi):
        log(
            f"{name}: training {stage_name} ({stage.model.protection.name if stage.model.protection else 'unprotected'})"
        )
        stages[stage_name] = train_stage(stage, log, upstream)
        upstream = stages[stage_name]["key"]
    last = list(stages.values())[-1]
    return {
        "model_dir": last["model_dir"],
        "steps": sum(s["steps"] for s in stages.values()),
        "seconds": round(sum(s["seconds"] for s in stages.values()), 1),
        "stages": {k: {"steps": v["steps"], "seconds": v["seconds"]} for k, v in stages.items()},
    }


def train_judge(cfg: PrivacyBenchmarkConfig, log: Log = print) -> str:
    """The independent recognizer: given, or the recipe trained on the attacker's data."""
    from synthface.recognition.privacy.attacks import dataset_split

    if cfg.attack.judge.model:
        return cfg.attack.judge.model
    base = recipe(cfg, cfg.attack.judge.overrides)
    data = base.model_dump(mode="json")
    data["data"]["train"] = cfg.attack.data
    data["data"]["split"] = dataset_split(cfg.attack.data)
    data["train"]["seed"] = base.train.seed + 1
    data["train"]["output_dir"] = str(Path(cfg.output_dir) / "judge")
    judge = validate_config(data, TrainConfig, "attack.judge")
    log("judge: training the independent recognizer on the attacker's data")
    return train_stage(judge, log)["model_dir"]


# ------------------------------------------------------------------ verification


def device_of(cfg: PrivacyBenchmarkConfig) -> torch.device:
    """Where verification and attacks run (training follows the recipe's ``train.device``)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no CUDA device is available")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _weights_key(model_dir: str) -> str:
    meta = _read_json(Path(model_dir) / "config.json") or {}
    return (meta.get("weights") or {}).get("sha256", "")


@torch.no_grad()
def protocol_scores(model, bin_path: str, batch_pairs: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of a protocol's pairs: flip-summed embeddings, or SlerpFace matching
    (image A enrolled with a fresh key, image B matched against it)."""
    from synthface.pipeline.formats.verification_bin import read_bin
    from synthface.recognition.evaluation.embed import decode_images
    from synthface.recognition.privacy.attacks import to_input
    from synthface.recognition.privacy.slerpface import SlerpFace

    blobs, issame = read_bin(bin_path)
    size = model.input_size[0]
    slerp = isinstance(model, SlerpFace)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(getattr(model, "eval_seed", 0))
    scores = []
    for lo in range(0, len(issame), batch_pairs):
        imgs = decode_images(blobs[2 * lo : 2 * (lo + batch_pairs)], (size, size), source=bin_path)
        x = to_input(imgs, size).to(device)
        a, b = x[0::2], x[1::2]
        if slerp:
            scores.append(model.match(b, model.enrol(a, gen)))
        else:
            e = torch.nn.functional.normalize(model(x) + model(x.flip(-1)), dim=1)
            scores.append((e[0::2] * e[1::2]).sum(1))
    return torch.cat(scores).double().cpu().numpy(), np.asarray(issame, dtype=bool)


def evaluate_method(
    cfg: PrivacyBenchmarkConfig, name: str, model_dir: str, log: Log = print
) -> dict:
    """10-fold accuracy (cosine scores, exact threshold sweep) on every protocol."""
    from synthface.recognition.checkpoint import load_recognizer
    from synthface.recognition.evaluation.verification import evaluate_scores

    path = method_dir(cfg, name) / "eval.json"
    key = _key({"weights": _weights_key(model_dir), "protocols": cfg.protocols})
    cached = _read_json(path)
    if cached and cached.get("key") == key:
        return cached["protocols"]
    model = load_recognizer(model_dir, device=device_of(cfg))
    out = {}
    for bin_path in cfg.protocols:
        scores, issame = protocol_scores(model, bin_path, cfg.eval_batch_size // 2)
        res = evaluate_scores(scores, issame, metric="cosine", name=Path(bin_path).stem)
        out[Path(bin_path).stem] = {"accuracy": res.accuracy, "std": res.accuracy_std}
        log(f"{name}: {res.summary()}")
    atomic_write_json(path, {"key": key, "protocols": out})
    return out


# ------------------------------------------------------------------ attacks


def attack_method(
    cfg: PrivacyBenchmarkConfig, name: str, model_dir: str, judge_dir: str, log: Log = print
) -> dict:
    """Visual and reconstruction attacks (template attacks for template protections)."""
    from synthface.recognition.checkpoint import load_recognizer
    from synthface.recognition.privacy import attacks

    a = cfg.attack
    path = method_dir(cfg, name) / "attack.json"
    key = _key(
        {
            "weights": _weights_key(model_dir),
            "judge": _weights_key(judge_dir),
            "attack": a.model_dump(mode="json"),
        }
    )
    cached = _read_json(path)
    if cached and cached.get("key") == key:
        return cached["result"]
    device = device_of(cfg)
    model = load_recognizer(model_dir, device=device)
    judge = load_recognizer(judge_dir, device=device)
    size = model.input_size[0]
    ta, tb = attacks.load_target_pairs(a.targets, a.target_pairs, size)
    targets_a = attacks.to_input(ta, size).to(device)
    targets_b = attacks.to_input(tb, size).to(device)
    attacker = attacks.to_input(attacks.load_dataset_images(a.data, a.images)[0], size).to(device)
    settings = attacks.InversionSettings(
        steps=a.inversion.steps,
        batch_size=a.inversion.batch_size,
        lr=a.inversion.lr,
        widths=tuple(a.inversion.widths),
        seed=a.seed,
    )
    result: dict[str, Any] = {"visual": attacks.visual_attack(model, targets_b)}
    if getattr(model, "template_view", False):
        log(f"{name}: template attacks")
        templates = attacks.template_attacks(model, attacker, targets_a, targets_b, judge, settings)
        result["templates"] = templates
        result["reconstruction"] = {
            **templates["protected_image_inversion"],
            "chance": templates["chance"],
        }
    else:
        log(f"{name}: reconstruction attack")
        result["reconstruction"] = attacks.reconstruction_attack(
            model, attacker, targets_a, targets_b, judge, settings
        )
    atomic_write_json(path, {"key": key, "result": result})
    return result


# ------------------------------------------------------------------ table


def table_rows(cfg: PrivacyBenchmarkConfig, results: dict[str, dict]) -> list[dict]:
    """One flat row per method, with the deltas to the baseline of the same run."""
    base = results[cfg.baseline.name]
    base_mean = float(np.mean([p["accuracy"] for p in base["eval"].values()]))
    rows = []
    for spec in cfg.methods:
        r = results[spec.name]
        accs = {k: v["accuracy"] for k, v in r["eval"].items()}
        mean = float(np.mean(list(accs.values())))
        rec = r["attack"]["reconstruction"]
        vis = r["attack"]["visual"]
        # identification is a float32 share of the targets: compare with a tolerance
        near = rec["identification"] <= NEAR_CHANCE * rec["chance"] + 1e-6
        delta = 100 * (mean - base_mean)
        rows.append(
            {
                "method": spec.name,
                "protection": spec.protection or "none",
                "steps": r["train"]["steps"],
                "train_s": r["train"]["seconds"],
                **{f"acc_{k}": round(100 * v, 2) for k, v in accs.items()},
                "acc_mean": round(100 * mean, 2),
                "delta_acc": round(delta, 2),
                "visual_psnr": None if vis is None else round(vis["psnr"], 2),
                "visual_ssim": None if vis is None else round(vis["ssim"], 3),
                "recon_psnr": round(rec["psnr"], 2),
                "recon_ssim": round(rec["ssim"], 3),
                "recon_identification": round(100 * rec["identification"], 2),
                "chance": round(100 * rec["chance"], 2),
                "goal_met": spec.protection is not None and delta >= -1.0 and near,
            }
        )
    return rows


def _markdown(cfg: PrivacyBenchmarkConfig, rows: list[dict], results: dict) -> str:
    protocols = [Path(p).stem for p in cfg.protocols]
    head = (
        ["method", "steps", "train s"]
        + [f"{p} %" for p in protocols]
        + ["mean %", "Δ acc", "visual PSNR/SSIM", "recon PSNR/SSIM", "recon ID %", "goal"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        vis = "-" if r["visual_psnr"] is None else f"{r['visual_psnr']} / {r['visual_ssim']}"
        goal = "baseline" if r["protection"] == "none" else ("met" if r["goal_met"] else "missed")
        cells = (
            [r["method"], str(r["steps"]), str(r["train_s"])]
            + [f"{r['acc_' + p]:.2f}" for p in protocols]
            + [
                f"{r['acc_mean']:.2f}",
                f"{r['delta_acc']:+.2f}",
                vis,
                f"{r['recon_psnr']} / {r['recon_ssim']}",
                f"{r['recon_identification']:.2f}",
                goal,
            ]
        )
        lines.append("| " + " | ".join(cells) + " |")
    chance = rows[0]["chance"]
    judge = results[cfg.baseline.name]["attack"]["reconstruction"].get("judge_on_originals")
    lines.append("")
    lines.append(
        f"Chance identification {chance:.2f} % ({cfg.attack.target_pairs} targets); "
        + (
            f"the judge identifies {100 * judge:.2f} % of the original images. "
            if judge is not None
            else ""
        )
        + f"Goal: Δ acc >= -1 point and recon ID <= {NEAR_CHANCE:g} x chance."
    )
    for spec in cfg.methods:
        t = results[spec.name]["attack"].get("templates")
        if not t:
            continue
        lines += [
            "",
            f"Templates ({spec.name}): matching unprotected templates identifies "
            f"{100 * t['unprotected_match_identification']:.2f} %; inverting protected templates "
            f"(with their keys) to embeddings identifies "
            f"{100 * t['protected_embedding_inversion_identification']:.2f} %; image inversion "
            f"of unprotected / protected templates: judge ID "
            f"{100 * t['unprotected_image_inversion']['identification']:.2f} % / "
            f"{100 * t['protected_image_inversion']['identification']:.2f} %; cross-key "
            f"matching accuracy {100 * t['cross_key_accuracy']:.2f} % (AUC "
            f"{100 * t['cross_key_auc']:.2f} %, 50 % = unlinkable).",
        ]
    return "\n".join(lines) + "\n"


def write_table(cfg: PrivacyBenchmarkConfig, results: dict[str, dict]) -> dict[str, str]:
    """``table.md``, ``table.csv`` and ``results.json`` in the output directory (atomic)."""
    out = Path(cfg.output_dir)
    rows = table_rows(cfg, results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "table.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "table.md", _markdown(cfg, rows, results).encode())
    atomic_write_json(
        out / "results.json",
        {"config": cfg.model_dump(mode="json"), "rows": rows, "methods": results},
    )
    return {
        k: str(out / f)
        for k, f in (("markdown", "table.md"), ("csv", "table.csv"), ("json", "results.json"))
    }


def run_benchmark(cfg: PrivacyBenchmarkConfig, log: Log = print) -> dict:
    """The whole benchmark without Prefect, in the flow's order."""
    check_inputs(cfg)
    roi = region_of_interest(cfg)
    judge = train_judge(cfg, log)
    results = {}
    for spec in cfg.methods:
        trained = train_method(cfg, spec.name, roi, log)
        results[spec.name] = {
            "train": trained,
            "eval": evaluate_method(cfg, spec.name, trained["model_dir"], log),
            "attack": attack_method(cfg, spec.name, trained["model_dir"], judge, log),
        }
    return {"tables": write_table(cfg, results), "rows": table_rows(cfg, results)}
