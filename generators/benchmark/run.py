"""The benchmark's stage graph, one function per stage of the table.

``STAGES`` is the one ordering: real data -> judge and encoder -> generators -> synthetic
sets (with their distance to real and the face gate) -> training sets -> recognizers
(one per training set and seed) -> evaluation -> identity-scaling series -> variation ->
report. Each stage function reads and fills one :class:`BenchmarkRun`, so a stage can be
read (and changed) on its own. ``run_benchmark`` calls them in order; the
``benchmark-synthetic`` flow does the same loop, passing ``execute`` (each
content-addressed stage becomes a Prefect task) and ``generate`` (each synthetic set
through the ``generate-synthetic`` subflow).

Every stage is content-addressed (:class:`synthface.pipeline.stages.StageStore`): its key
hashes its config section and the keys of the stages it reads (a recognizer's key holds
its training seed), so a second run skips everything whose inputs did not change, adding
a generator or a seed runs only the new stages, and a killed run resumes in the stage it
was in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
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

REAL = "real"  # the real baseline at the synthetic sets' image count
REAL_ALL = "real-all"  # every real training image: the real part of real + synthetic


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class BenchmarkRun:
    """What the stages share: the config, the stage store and every stage's results."""

    cfg: BenchmarkConfig
    store: StageStore
    generate: Callable
    device: str
    t0: float = field(default_factory=time.perf_counter)
    real: dict = field(default_factory=dict)
    bins: dict = field(default_factory=dict)
    bins_key: object = None
    tree: str | None = None
    tree_key: object = None
    calibration: dict | None = None
    judge: dict = field(default_factory=dict)
    gallery: dict = field(default_factory=dict)
    encoder: dict | None = None
    generators: dict[str, dict] = field(default_factory=dict)
    synthetic: dict[str, dict] = field(default_factory=dict)
    distance: dict | None = None
    sets: dict[str, dict] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    # set -> seed -> trained model / evaluation result
    models: dict[str, dict[int, dict]] = field(default_factory=dict)
    results: dict[str, dict[int, dict]] = field(default_factory=dict)
    scaling: dict | None = None
    variation: dict | None = None
    summary: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.cfg.image_size

    @property
    def view(self) -> str | None:
        return self.cfg.recognition.view

    def world(self, name: str, w) -> dict:
        inputs = {"world": w.model_dump(mode="json"), "size": self.size}
        return self.store.run(
            "real",
            name,
            inputs,
            lambda d: D.world_set(
                d / "data",
                identities=w.identities,
                per_identity=w.per_identity,
                size=self.size,
                seed=w.seed,
            ),
        )

    def recognizer(
        self, name: str, train: dict, extra=(), view: str | None = None, seed: int | None = None
    ) -> dict:
        """The recipe on ``train`` (through ``view``), with ``train.seed`` when given."""
        cfg = self.cfg.recognition
        seeded = [] if seed is None else [f"train.seed={seed}"]
        recipe = M.recipe_config(cfg.recipe, [*cfg.overrides, *extra, *seeded], device=self.device)
        return self.store.run(
            "recognizer",
            name if seed is None else f"{name}-seed{seed}",
            {
                "recipe": M.recipe_key(recipe),  # holds train.seed
                "data": train["key"],
                **({"view": view} if view else {}),
            },
            lambda d: M.train_recognizer(d, recipe, train["path"], view),
        )


# ----------------------------------------------------------------------------- 1. real data
def real_data(run: BenchmarkRun) -> None:
    """The real training set, the held-out protocols and the FRCSyn calibration tree."""
    cfg, store, size = run.cfg, run.store, run.size
    rs = cfg.real
    if rs.source == "world":
        run.real = run.world("world", rs.world)
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
        run.bins = {name: prot["bins"][name] for name in prot["protocols"]}
        run.tree = prot["tree"]
        run.bins_key = run.tree_key = prot["key"]
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
        run.real = {"path": rs.train, "key": D.dataset_identity(rs.train)}
        run.real.update(D.dataset_identity(rs.train))
        run.bins = {Path(b).stem: b for b in rs.bins}
        run.bins_key = D.bins_identity(rs.bins)
        run.tree, run.tree_key = rs.tree, (D.tree_identity(rs.tree) if rs.tree else None)
        holdout_path = rs.holdout or rs.train
        holdout_key = D.dataset_identity(holdout_path)
        n_hold = min(rs.calibration_identities, D.dataset_identity(holdout_path)["num_identities"])
    if run.tree is not None and cfg.evaluation.frcsyn:
        run.calibration = store.run(
            "calibration",
            "frcsyn",
            {"holdout": holdout_key, "identities": n_hold},
            lambda d: D.calibration_tree(d / "tree", holdout_path, identities=n_hold, seed=0),
        )


# ------------------------------------------------------------------ 2. judge and encoder
def judge_and_encoder(run: BenchmarkRun) -> None:
    """The independent judge, its gallery of real identities, the conditioning encoder."""
    cfg = run.cfg

    def given(path: str) -> dict:
        return {"model": path, "key": M.recognizer_identity(path)}

    if cfg.judge.recognizer is not None:
        run.judge = given(cfg.judge.recognizer)
    else:
        judge_world = run.world("judge-world", cfg.judge.world)
        run.judge = run.recognizer("judge", judge_world, cfg.judge.overrides)
    run.gallery = run.store.run(
        "gallery",
        "judge-real",
        {"judge": run.judge["key"], "real": run.real["key"]},
        lambda d: judge_gallery(d, run.judge["model"], run.real["path"], device=run.device),
    )
    if any(g.config is not None for g in cfg.generators):
        if cfg.encoder.recognizer is not None:
            run.encoder = given(cfg.encoder.recognizer)
        else:
            run.encoder = run.recognizer("encoder", run.real, cfg.encoder.overrides)


# --------------------------------------------------------------------------- 3. generators
def generators(run: BenchmarkRun) -> None:
    """Each entry's generator, trained here (shared by entries that differ only in label
    and sampler options) or loaded from its checkpoint."""
    for entry in run.cfg.generators:
        if entry.config is not None:
            enc = run.encoder
            gcfg = M.generator_config(
                entry,
                image_size=run.size,
                encoder=enc["model"],
                data=run.real["path"],
                dim=M.embedding_dim(enc["model"]),
            )
            gen = run.store.run(
                "generator",
                entry.name,  # not the label: a sampling ablation's entries share it
                {"config": M.generator_key(gcfg), "real": run.real["key"], "encoder": enc["key"]},
                lambda d, gcfg=gcfg: M.train_generator_stage(d, gcfg),
            )
        else:
            loaded = M.load_generator_stage(entry)
            gen = {**loaded, "key": loaded["sha256"]}
        run.generators[entry.id] = gen


# ----------------------------------------------------------------------- 4. synthetic sets
def _synthesize(run: BenchmarkRun, entry, name: str, identities: int) -> dict:
    """``identities`` x ``budget.per_identity`` images of one generator, judged by the judge."""
    cfg, gen, judge, gallery = run.cfg, run.generators[entry.id], run.judge, run.gallery
    bcfg = cfg.model_copy(
        update={"budget": cfg.budget.model_copy(update={"identities": identities})}
    )
    return run.store.run(
        "synthetic",
        name,
        {
            "generator": gen["key"],
            "name": entry.name,
            **({"sampler_options": entry.sampler_options} if entry.sampler_options else {}),
            "generation": cfg.generation.model_dump(mode="json"),
            "budget": bcfg.budget.model_dump(mode="json"),
            "judge": judge["key"],
            "gallery": gallery["key"],
            "device": run.device,
        },
        lambda d: synthesize(
            d,
            generation_config(
                d / "dataset",
                name=entry.name,
                checkpoint=gen["checkpoint"],
                judge=judge["model"],
                gallery=gallery["gallery"],
                cfg=bcfg,
                sampler_options=entry.sampler_options,
                real_nearest_cos=gallery["real_nearest_neighbour_cos"]["p95"],
            ),
            run.generate,
        ),
    )


def synthetic_sets(run: BenchmarkRun) -> None:
    """Every generator's set at the same budget, then its Fréchet distance to real images
    in the judge's space and the face gate's verdict (``distance.py``)."""
    from synthface.generators.benchmark.distance import real_reference, set_distance

    cfg = run.cfg
    for entry in cfg.generators:
        run.synthetic[entry.id] = _synthesize(run, entry, entry.id, cfg.budget.identities)
    dc = cfg.distance
    if not dc.enabled:
        return
    n = dc.images or cfg.budget.identities * cfg.budget.per_identity
    judge = run.judge
    ref = run.store.run(
        "distance",
        "real-reference",
        {
            "judge": judge["key"],
            "real": run.real["key"],
            "images": n,
            "seed": dc.seed,
            "texture_control": 2,  # 2: the DC phase kept (1 flipped it for half the images)
            "selection": "spread",  # images spread over identities (distance._images)
            "halves": "hashed",  # reference and floor identities: distance.half_of
        },
        lambda d: real_reference(
            d, judge["model"], run.real["path"], images=n, device=run.device, seed=dc.seed
        ),
    )
    sets = {
        g: run.store.run(
            "distance",
            g,
            # floor: each set's own floor and texture control, with its identity structure
            {"reference": ref["key"], "synthetic": syn["key"], "floor": "matched"},
            lambda d, syn=syn: set_distance(
                d,
                judge["model"],
                syn["path"],
                ref,
                real=run.real["path"],
                device=run.device,
                seed=dc.seed,
            ),
        )
        for g, syn in run.synthetic.items()
    }
    run.distance = {
        "reference": {k: ref[k] for k in ("images", "fd_real_floor", "fd_texture", "gate")},
        "sets": {g: {k: v[k] for k in _SET_DISTANCE} for g, v in sets.items()},
    }


_SET_DISTANCE = ("fd", "images", "identities", "fd_floor", "fd_texture", "face_score", "verdict")


# ------------------------------------------------------------------------ 5. training sets
def training_sets(run: BenchmarkRun) -> None:
    """real (the synthetic sets' image count), real-all (every real training image),
    each synthetic set (through its QC view) and real-all + each synthetic set."""
    cfg, store, real, view = run.cfg, run.store, run.real, run.view
    budget = cfg.budget.identities * cfg.budget.per_identity
    run.sets[REAL] = store.run(
        "trainset",
        REAL,
        {"real": real["key"], "images": budget, "per_identity": cfg.budget.per_identity},
        lambda d: D.real_subset(
            d / "data", real["path"], num_images=budget, per_identity=cfg.budget.per_identity
        ),
    )
    run.kinds[REAL] = "real"
    run.sets[REAL_ALL] = real
    run.kinds[REAL_ALL] = "real"
    for g, syn in run.synthetic.items():
        run.sets[g] = syn if view is None else {**syn, **D.view_counts(syn["path"], view)}
        run.kinds[g] = "synthetic"
    for g, syn in run.synthetic.items():
        run.sets[f"{REAL}+{g}"] = store.run(
            "trainset",
            f"{REAL}+{g}",
            {"real": real["key"], "synthetic": syn["key"], **({"view": view} if view else {})},
            lambda d, syn=syn: D.merge_sets(d / "data", real["path"], syn["path"], view=view),
        )
        run.kinds[f"{REAL}+{g}"] = "real+synthetic"


def reference_of(kind: str) -> str | None:
    """The row a set is compared with: synthetic-only sets against real data of the same
    image count, real + synthetic against all the real images it contains."""
    return {"synthetic": REAL, "real+synthetic": REAL_ALL}.get(kind)


# -------------------------------------------------------------------------- 6. recognizers
def _train_set(run: BenchmarkRun, name: str) -> None:
    view = run.view if run.kinds[name] == "synthetic" else None
    run.models[name] = {
        seed: run.recognizer(name, run.sets[name], view=view, seed=seed)
        for seed in run.cfg.recognition.seeds
    }


def recognizers(run: BenchmarkRun) -> None:
    """One recognizer of the recipe per training set and seed."""
    for name in run.sets:
        _train_set(run, name)


# --------------------------------------------------------------------------- 7. evaluation
def _evaluate_set(run: BenchmarkRun, name: str, frcsyn: bool = True) -> None:
    """Every protocol and FRCSyn for each seed's recognizer; FRCSyn's baseline system is
    the reference row's recognizer of the same seed."""
    evaluation, kind = run.cfg.evaluation, run.kinds[name]
    calibration = run.calibration if frcsyn else None
    baseline_set = reference_of(kind) or name
    # FRCSyn's image-count rule concerns the synthetic images alone: a real + synthetic
    # row's own count includes every real image
    synthetic_images = {
        "real": 0,
        "synthetic": run.sets[name]["num_samples"],
        "real+synthetic": run.sets[name.removeprefix(f"{REAL}+")]["num_samples"],
    }[kind]
    run.results[name] = {}
    for seed, model in run.models[name].items():
        baseline = run.models[baseline_set][seed]

        def work(d, model=model, baseline=baseline):
            out = {
                "verification": E.verification(
                    d, model["model"], run.bins, batch_size=evaluation.batch_size, device=run.device
                )
            }
            if calibration is not None:
                out["frcsyn"] = E.frcsyn(
                    d,
                    proposed=model["model"],
                    baseline=baseline["model"],
                    tree=run.tree,
                    calibration=calibration["tree"],
                    synthetic_only=kind == "synthetic",
                    synthetic_images=synthetic_images,
                    edition=evaluation.edition,
                    method=evaluation.threshold_method,
                    batch_size=evaluation.batch_size,
                    device=run.device,
                )
            return out

        run.results[name][seed] = run.store.run(
            "evaluation",
            f"{name}-seed{seed}",
            {
                "model": model["key"],
                "baseline": baseline["key"],
                "bins": run.bins_key,
                "tree": run.tree_key,
                "calibration": None if calibration is None else calibration["key"],
                "synthetic_images": synthetic_images,
                "evaluation": evaluation.model_dump(mode="json"),
            },
            work,
        )


def evaluation(run: BenchmarkRun) -> None:
    # reference rows first: FRCSyn scores every set against them
    for name in sorted(run.sets, key=lambda n: run.kinds[n] != "real"):
        _evaluate_set(run, name)


# ------------------------------------------------------------------- 8. identity scaling
def _mean_accuracy(run: BenchmarkRun, name: str) -> float:
    return E.aggregate(run.results[name], list(run.bins))["mean_accuracy"]["mean"]


def best_generator(run: BenchmarkRun) -> tuple[str, str]:
    """The scaling series' generator and why: named in the config, or the best
    synthetic-only row by mean accuracy among the sets that pass the face gate."""
    if run.cfg.scaling.generator is not None:
        return run.cfg.scaling.generator, "named in scaling.generator"
    ids = list(run.synthetic)
    if run.distance is None:
        return max(ids, key=lambda g: _mean_accuracy(run, g)), "best mean accuracy (no face gate)"
    verdicts = run.distance.get("sets", {})
    passed = [g for g in ids if verdicts.get(g, {}).get("verdict") != "not faces"]
    best = max(passed or ids, key=lambda g: _mean_accuracy(run, g))
    if not passed:
        return best, "best mean accuracy (no set passes the face gate)"
    undecided = [g for g in passed if verdicts.get(g, {}).get("verdict") != "faces"]
    why = "best mean accuracy among sets that pass the face gate"
    return best, why + (
        f" (undecided, counted as passing: {', '.join(undecided)})" if undecided else ""
    )


def scaling_series(run: BenchmarkRun) -> None:
    """The chosen generator at each identity count (budget.per_identity images each),
    trained with every seed and verified on every protocol like a table row (FRCSyn only
    for the table's own row: the series asks how accuracy grows, and FRCSyn doubles an
    evaluation's cost)."""
    sc, cfg = run.cfg.scaling, run.cfg
    if not sc.identities:
        return
    g, why = best_generator(run)
    entry = next(e for e in cfg.generators if e.id == g)
    rows = []
    for n in sorted(sc.identities):
        name = g if n == cfg.budget.identities else f"{g}-{n}ids"
        if name not in run.results:
            syn = _synthesize(run, entry, name, n)
            view = run.view
            run.sets[name] = syn if view is None else {**syn, **D.view_counts(syn["path"], view)}
            run.kinds[name] = "synthetic"
            _train_set(run, name)
            _evaluate_set(run, name, frcsyn=False)
        agg = E.aggregate(run.results[name], list(run.bins))
        gap = E.aggregate_gap(run.results[name], run.results[REAL], list(run.bins))
        rows.append(
            {
                "identities": n,
                "set": name,
                "trained_identities": run.sets[name]["num_identities"],
                "images": run.sets[name]["num_samples"],
                "mean_accuracy": agg["mean_accuracy"],
                "gap_to_real": gap["mean"],
            }
        )
    run.scaling = {
        "generator": g,
        "chosen_by": why,
        "per_identity": cfg.budget.per_identity,
        "rows": rows,
    }


# ---------------------------------------------------------------------------- 9. variation
def variation(run: BenchmarkRun) -> None:
    """Intra-class spread of pose and age of the real and synthetic training sets."""
    vc = run.cfg.variation
    if not vc.enabled:
        return
    from synthface.generators.benchmark.variation import measure_set, train_regressor

    vtrain = run.world("variation-world", vc.world)
    held = vc.world.model_copy(update={"identities": 64, "seed": vc.world.seed + 1000})
    vheld = run.world("variation-held-out", held)
    reg = run.store.run(
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
            size=run.size,
            steps=vc.steps,
            batch_size=vc.batch_size,
            lr=vc.lr,
        ),
    )
    measured = {}
    for name in [REAL, *run.synthetic]:
        measured[name] = run.store.run(
            "variation",
            name,
            {"regressor": reg["key"], "data": run.sets[name]["key"], "max": vc.max_identities},
            lambda d, name=name: measure_set(
                reg["path"], run.sets[name]["path"], max_identities=vc.max_identities
            ),
        )
    run.variation = {
        "regressor": {k: reg[k] for k in ("attributes", "held_out_mae", "held_out_corr")},
        "sets": {
            n: {k: v[k] for k in ("identities", "images", "predicted", "recorded") if k in v}
            for n, v in measured.items()
        },
    }


# ------------------------------------------------------------------------------- 10. report
def report(run: BenchmarkRun) -> None:
    """Mean +- std over seeds per row, gaps against each row's reference, the report files."""
    cfg, store = run.cfg, run.store
    protocols = list(run.bins)
    table = [n for n in run.sets if n in run.results and not _is_scaling(run, n)]
    agg = {n: E.aggregate(run.results[n], protocols) for n in table}
    gap = {}
    for n in table:
        ref = reference_of(run.kinds[n])
        if ref is not None:
            gap[n] = {
                **E.aggregate_gap(run.results[n], run.results[ref], protocols),
                "reference": ref,
            }
    summary = {
        "name": cfg.name,
        "config": cfg.model_dump(mode="json"),
        "budget": cfg.budget.model_dump(mode="json"),
        "recipe": cfg.recognition.recipe,
        "seeds": list(cfg.recognition.seeds),
        "view": run.view,
        "judge": run.judge["model"],
        "real": {k: run.real[k] for k in ("num_identities", "num_samples") if k in run.real},
        "protocols": protocols,
        "sets": {
            n: {
                "kind": run.kinds[n],
                "reference": reference_of(run.kinds[n]),
                "num_identities": run.sets[n]["num_identities"],
                "num_samples": run.sets[n]["num_samples"],
                "recognizers": {str(s): m["model"] for s, m in run.models[n].items()},
            }
            for n in table
        },
        "verification": {n: a["verification"] for n, a in agg.items()},
        "mean_accuracy": {n: a["mean_accuracy"]["mean"] for n, a in agg.items()},
        "mean_accuracy_std": {n: a["mean_accuracy"]["std"] for n, a in agg.items()},
        "gap_to_real": gap,
        "frcsyn": {n: a["frcsyn"] for n, a in agg.items() if a.get("frcsyn")},
        "distance": run.distance,
        "scaling": run.scaling,
        "gallery": {k: run.gallery[k] for k in ("identities", "real_nearest_neighbour_cos")},
        "generation": {
            g: {
                "generator": run.generators[g].get("checkpoint"),
                "train_steps": run.generators[g].get("steps"),
                "qc": run.synthetic[g]["qc"],
                "anchors": run.synthetic[g]["anchors"],
                "warnings": run.synthetic[g]["warnings"],
            }
            for g in run.synthetic
        },
        "variation": run.variation,
        "stages": {"executed": store.executed, "skipped": store.skipped, "seconds": store.seconds},
        "stages_dir": str(store.root),
        "total_seconds": round(time.perf_counter() - run.t0, 1),
    }
    summary["report"] = write_report(Path(cfg.output_dir) / "report", summary)
    run.summary = summary


def _is_scaling(run: BenchmarkRun, name: str) -> bool:
    return run.kinds[name] == "synthetic" and name not in run.synthetic


STAGES: tuple[Callable[[BenchmarkRun], None], ...] = (
    real_data,
    judge_and_encoder,
    generators,
    synthetic_sets,
    training_sets,
    recognizers,
    evaluation,
    scaling_series,
    variation,
    report,
)


def start(
    cfg: BenchmarkConfig, *, execute: Callable | None = None, generate: Callable | None = None
) -> BenchmarkRun:
    """Check the generator entries (before anything trains) and open the stage store."""
    import torch

    from synthface.generators.dataset import generate_dataset

    M.check_entries(cfg)
    torch.set_num_threads(cfg.threads)
    store = StageStore(Path(cfg.output_dir) / "stages", execute=execute or call_directly)
    return BenchmarkRun(cfg, store, generate or generate_dataset, _device(cfg.device))


def run_benchmark(
    cfg: BenchmarkConfig,
    *,
    execute: Callable | None = None,
    generate: Callable | None = None,
) -> dict:
    """Run (or resume) the whole benchmark; returns the report's summary (``benchmark.json``)."""
    run = start(cfg, execute=execute, generate=generate)
    for stage in STAGES:
        stage(run)
    return run.summary
