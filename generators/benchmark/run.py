"""The benchmark's stage graph: real data -> generators -> synthetic sets -> recognizers -> report.

``run_benchmark`` is the one ordering of the stages, used by the ``benchmark-synthetic``
flow (which passes ``execute`` to run each stage as a Prefect task and ``generate`` to
produce each synthetic set through the ``generate-synthetic`` subflow) and by plain
Python. Every stage is content-addressed (:class:`synthface.pipeline.stages.StageStore`):
its key hashes its config section and the keys of the stages it reads, so a second run
skips everything whose inputs did not change — adding a generator runs that generator's
stages (and the report) only — and a killed run resumes in the stage it was in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from synthface.generators.benchmark import data as D
from synthface.generators.benchmark import evaluate as E
from synthface.generators.benchmark import models as M
from synthface.generators.benchmark.config import BenchmarkConfig
from synthface.generators.benchmark.generation import (
    generation_config,
    judge_gallery,
    synthesize,
)
from synthface.generators.benchmark.report import write_report
from synthface.pipeline.stages import StageStore, call_directly

REAL = "real"


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_benchmark(
    cfg: BenchmarkConfig,
    *,
    execute: Callable | None = None,
    generate: Callable | None = None,
) -> dict:
    """Run (or resume) the whole benchmark; returns the report's summary (``benchmark.json``)."""
    import torch

    from synthface.generators.produce import generate_dataset

    t0 = time.perf_counter()
    M.check_entries(cfg)
    torch.set_num_threads(cfg.threads)
    generate = generate or generate_dataset
    root = Path(cfg.output_dir)
    store = StageStore(root / "stages", execute=execute or call_directly)
    size, device = cfg.image_size, _device(cfg.device)
    evaluation = cfg.evaluation

    def world(name: str, w, **extra) -> dict:
        inputs = {"world": w.model_dump(mode="json"), "size": size}
        return store.run(
            "real",
            name,
            inputs,
            lambda d: D.world_set(
                d / "data",
                identities=w.identities,
                per_identity=w.per_identity,
                size=size,
                seed=w.seed,
            ),
        )

    # 1. real data -------------------------------------------------------------------
    rs = cfg.real
    if rs.source == "world":
        real = world("world", rs.world)
        p = rs.protocols
        prot = store.run(
            "protocols",
            "world",
            {**p.model_dump(mode="json"), "size": size},
            lambda d: D.world_protocols(
                d,
                names=p.names,
                folds=p.folds,
                pairs_per_fold=p.pairs_per_fold,
                size=size,
                seed=p.seed,
            ),
        )
        # (a marker's JSON has sorted keys: the protocol order comes from its list)
        bins = {name: prot["bins"][name] for name in prot["protocols"]}
        tree = prot["tree"]
        bins_key, tree_key = prot["key"], prot["key"]
        n_hold = min(rs.calibration_identities, rs.world.identities)
        holdout = store.run(
            "real",
            "holdout",
            {"world": rs.world.model_dump(mode="json"), "size": size, "identities": n_hold},
            lambda d: D.world_holdout(
                d / "data",
                identities=n_hold,
                first_index=rs.world.per_identity,
                size=size,
                seed=rs.world.seed,
            ),
        )
        holdout_path, holdout_key = holdout["path"], holdout["key"]
    else:
        real = {"path": rs.train, "key": D.dataset_identity(rs.train)}
        real.update(D.dataset_identity(rs.train))
        bins = {Path(b).stem: b for b in rs.bins}
        bins_key = D.bins_identity(rs.bins)
        tree, tree_key = rs.tree, (D.tree_identity(rs.tree) if rs.tree else None)
        holdout_path = rs.holdout or rs.train
        holdout_key = D.dataset_identity(holdout_path)
        n_hold = min(rs.calibration_identities, D.dataset_identity(holdout_path)["num_identities"])
    calibration = None
    if tree is not None and evaluation.frcsyn:
        calibration = store.run(
            "calibration",
            "frcsyn",
            {"holdout": holdout_key, "identities": n_hold},
            lambda d: D.calibration_tree(d / "tree", holdout_path, identities=n_hold, seed=0),
        )

    # 2. recognizers of one recipe ---------------------------------------------------------
    def recognizer(name: str, train: dict, extra: list[str] = ()) -> dict:
        recipe = M.recipe_config(
            cfg.recognition.recipe, [*cfg.recognition.overrides, *extra], device=device
        )
        return store.run(
            "recognizer",
            name,
            {"recipe": M.recipe_key(recipe), "data": train["key"]},
            lambda d: M.train_recognizer(d, recipe, train["path"]),
        )

    def given(path: str) -> dict:
        return {"model": path, "key": M.recognizer_identity(path)}

    if cfg.judge.recognizer is not None:
        judge = given(cfg.judge.recognizer)
    else:
        judge = recognizer("judge", world("judge-world", cfg.judge.world), cfg.judge.overrides)
    gallery = store.run(
        "gallery",
        "judge-real",
        {"judge": judge["key"], "real": real["key"]},
        lambda d: judge_gallery(d, judge["model"], real["path"], device=device),
    )
    encoder = None
    if any(g.config is not None for g in cfg.generators):
        if cfg.encoder.recognizer is not None:
            encoder = given(cfg.encoder.recognizer)
        else:
            encoder = recognizer("encoder", real, cfg.encoder.overrides)

    # 3. generators and 4. their synthetic sets ------------------------------------------
    generators: dict[str, dict] = {}
    synthetic: dict[str, dict] = {}
    for entry in cfg.generators:
        if entry.config is not None:
            gcfg = M.generator_config(
                entry,
                image_size=size,
                encoder=encoder["model"],
                data=real["path"],
                dim=M.embedding_dim(encoder["model"]),
            )
            gen = store.run(
                "generator",
                entry.name,  # not the label: a sampling ablation's entries share it
                {
                    "config": M.generator_key(gcfg),
                    "real": real["key"],
                    "encoder": encoder["key"],
                },
                lambda d, gcfg=gcfg: M.train_generator_stage(d, gcfg),
            )
        else:
            loaded = M.load_generator_stage(entry)
            gen = {**loaded, "key": loaded["sha256"]}
        generators[entry.id] = gen
        synthetic[entry.id] = store.run(
            "synthetic",
            entry.id,
            {
                "generator": gen["key"],
                "name": entry.name,
                **({"sampler_options": entry.sampler_options} if entry.sampler_options else {}),
                "generation": cfg.generation.model_dump(mode="json"),
                "budget": cfg.budget.model_dump(mode="json"),
                "judge": judge["key"],
                "gallery": gallery["key"],
                "device": device,
            },
            lambda d, entry=entry, gen=gen: synthesize(
                d,
                generation_config(
                    d / "dataset",
                    name=entry.name,
                    checkpoint=gen["checkpoint"],
                    judge=judge["model"],
                    gallery=gallery["gallery"],
                    cfg=cfg,
                    sampler_options=entry.sampler_options,
                ),
                generate,
            ),
        )

    # training sets: real (same image count), each synthetic set, real + each synthetic set
    budget = cfg.budget.identities * cfg.budget.per_identity
    sets: dict[str, dict] = {
        REAL: store.run(
            "trainset",
            REAL,
            {"real": real["key"], "images": budget, "per_identity": cfg.budget.per_identity},
            lambda d: D.real_subset(
                d / "data", real["path"], num_images=budget, per_identity=cfg.budget.per_identity
            ),
        )
    }
    kinds = {REAL: "real"}
    for g, syn in synthetic.items():
        sets[g] = syn
        kinds[g] = "synthetic"
    for g, syn in synthetic.items():
        sets[f"{REAL}+{g}"] = store.run(
            "trainset",
            f"{REAL}+{g}",
            {"real": real["key"], "synthetic": syn["key"]},
            lambda d, syn=syn: D.merge_sets(d / "data", real["path"], syn["path"]),
        )
        kinds[f"{REAL}+{g}"] = "real+synthetic"

    # 5. one recognizer per training set, 6. evaluation --------------------------------------
    models = {name: recognizer(name, info) for name, info in sets.items()}
    results: dict[str, dict] = {}
    for name, model in models.items():
        synthetic_only = kinds[name] == "synthetic"

        def work(d, name=name, model=model, synthetic_only=synthetic_only):
            out = {
                "verification": E.verification(
                    d, model["model"], bins, batch_size=evaluation.batch_size, device=device
                )
            }
            if calibration is not None:
                out["frcsyn"] = E.frcsyn(
                    d,
                    proposed=model["model"],
                    baseline=models[REAL]["model"],
                    tree=tree,
                    calibration=calibration["tree"],
                    synthetic_only=synthetic_only,
                    synthetic_images=sets[name]["num_samples"] if kinds[name] != REAL else 0,
                    edition=evaluation.edition,
                    method=evaluation.threshold_method,
                    batch_size=evaluation.batch_size,
                    device=device,
                )
            return out

        results[name] = store.run(
            "evaluation",
            name,
            {
                "model": model["key"],
                "baseline": models[REAL]["key"],
                "bins": bins_key,
                "tree": tree_key,
                "calibration": None if calibration is None else calibration["key"],
                "evaluation": evaluation.model_dump(mode="json"),
            },
            work,
        )

    # 7. intra-class variation -------------------------------------------------------------
    variation = None
    vc = cfg.variation
    if vc.enabled:
        from synthface.generators.benchmark.variation import measure_set, train_regressor

        vtrain = world("variation-world", vc.world)
        held = vc.world.model_copy(update={"identities": 64, "seed": vc.world.seed + 1000})
        vheld = world("variation-held-out", held)
        reg = store.run(
            "regressor",
            "pose-age",
            {
                "train": vtrain["key"],
                "held_out": vheld["key"],
                **vc.model_dump(mode="json", exclude={"enabled", "max_identities", "world"}),
            },
            lambda d: train_regressor(
                d,
                vtrain["path"],
                vheld["path"],
                attributes=vc.attributes,
                size=size,
                steps=vc.steps,
                batch_size=vc.batch_size,
                lr=vc.lr,
            ),
        )
        measured = {}
        for name in [REAL, *synthetic]:
            measured[name] = store.run(
                "variation",
                name,
                {"regressor": reg["key"], "data": sets[name]["key"], "max": vc.max_identities},
                lambda d, name=name: measure_set(
                    reg["path"], sets[name]["path"], max_identities=vc.max_identities
                ),
            )
        variation = {
            "regressor": {k: reg[k] for k in ("attributes", "held_out_mae", "held_out_corr")},
            "sets": {
                n: {k: v[k] for k in ("identities", "images", "predicted", "recorded") if k in v}
                for n, v in measured.items()
            },
        }

    # 8. the report ------------------------------------------------------------------------
    protocols = list(bins)
    verification = {n: r["verification"] for n, r in results.items()}
    mean_acc = {
        n: float(sum(v[p]["accuracy"] for p in protocols) / len(protocols))
        for n, v in verification.items()
    }
    gap = E.gaps(results, REAL)
    for n in gap:
        gap[n]["mean"] = mean_acc[REAL] - mean_acc[n]
    summary = {
        "name": cfg.name,
        "config": cfg.model_dump(mode="json"),
        "budget": cfg.budget.model_dump(mode="json"),
        "recipe": cfg.recognition.recipe,
        "judge": judge["model"],
        "real": {k: real[k] for k in ("num_identities", "num_samples") if k in real},
        "protocols": protocols,
        "sets": {
            n: {
                "kind": kinds[n],
                "num_identities": sets[n]["num_identities"],
                "num_samples": sets[n]["num_samples"],
                "recognizer": models[n]["model"],
            }
            for n in sets
        },
        "verification": verification,
        "mean_accuracy": mean_acc,
        "gap_to_real": gap,
        "frcsyn": {n: r["frcsyn"] for n, r in results.items() if "frcsyn" in r},
        "gallery": {k: gallery[k] for k in ("identities", "real_nearest_neighbour_cos")},
        "generation": {
            g: {
                "generator": generators[g].get("checkpoint"),
                "train_steps": generators[g].get("steps"),
                "qc": synthetic[g]["qc"],
                "anchors": synthetic[g]["anchors"],
                "warnings": synthetic[g]["warnings"],
            }
            for g in synthetic
        },
        "variation": variation,
        "stages": {
            "executed": store.executed,
            "skipped": store.skipped,
            "seconds": store.seconds,
        },
        "stages_dir": str(store.root),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    summary["report"] = write_report(root / "report", summary)
    return summary
