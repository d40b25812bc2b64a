"""The benchmark's one report: ``benchmark.md``, ``benchmark.json`` and ``accuracy.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_path, atomic_write_json, atomic_write_text


def _f(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return [*lines, ""]


def _pm(mean, std, digits: int = 2) -> str:
    return f"{_f(mean, digits)} +- {_f(std, digits)}"


def _name(s: dict, name: str) -> str:
    """A row's name, flagged (never hidden) when the face gate says its generated images
    (alone, or the synthetic part of real + synthetic) are not faces."""
    verdicts = (s.get("distance") or {}).get("sets") or {}
    verdict = verdicts.get(name, verdicts.get(name.removeprefix("real+"), {})).get("verdict")
    return f"`{name}`" + (" (**not faces**)" if verdict == "not faces" else "")


def _fd_cell(dist: dict, d: dict, kind: str) -> str:
    if d:
        return _f(d.get("fd"), 3)
    if dist and kind == "real":  # real rows: the real floor
        return _f(dist["reference"]["fd_real_floor"], 3)
    return "—"


def markdown(s: dict) -> str:
    protocols = s["protocols"]
    sets = list(s["sets"])
    seeds = s.get("seeds") or [0]
    dist = s.get("distance") or {}
    lines = [
        f"# Benchmark `{s['name']}`: synthetic identities vs real data",
        "",
        f"- Budget per generator: {s['budget']['identities']} identities x "
        f"{s['budget']['per_identity']} images (seed {s['budget']['seed']}). Two real "
        f"baselines: `real`, as many real images as a synthetic set (what synthetic-only "
        f"rows are compared with), and `real-all`, all {s['real']['num_samples']} real "
        f"training images ({s['real']['num_identities']} identities): the real part of every "
        "real + synthetic row, so *does adding synthetic data help* is measured at equal "
        "real data.",
        f"- One recognizer recipe for every training set: `{s['recipe']}`, trained once per "
        f"seed ({', '.join(map(str, seeds))}); every figure is the mean +- std over the "
        f"{len(seeds)} seeds; gaps are paired by seed.",
        *(
            [
                f"- Generated sets train through their QC view `{s['view']}`: identities and "
                "images QC left out (leaked, too few samples, duplicates, ...) reach no "
                "recognizer; the images column counts what each recognizer was trained on."
            ]
            if s.get("view")
            else []
        ),
        "- Verification: 10-fold accuracy (%) on held-out identities, the same code as "
        "`synthface eval verify --bin`. **Gap** = the reference row's accuracy minus the "
        "set's, in points (positive = below the reference): `real` for synthetic-only sets, "
        "`real-all` for real + synthetic (negative there = synthetic data helped).",
        f"- QC judge: an independent recognizer (`{s['judge']}`), trained on other "
        "identities with another seed; no generator was conditioned on it.",
        *(
            [
                "- **FD**: Fréchet distance of the set's images to real images in the judge's "
                "embedding space; **gate**: whether the judge finds the set closer to real "
                "faces than to texture (section below). A row flagged **not faces** stays in "
                "the table: its accuracy measures texture statistics, not faces."
            ]
            if dist
            else []
        ),
        "",
        "## Verification accuracy (%), mean +- std over seeds",
        "",
    ]
    header = ["training set", "vs", "identities", "images", "FD", "gate", *protocols, "mean", "gap"]
    rows = []
    for name in sets:
        v, info = s["verification"][name], s["sets"][name]
        d = (dist.get("sets") or {}).get(name, {})
        g = s["gap_to_real"].get(name)
        rows.append(
            [
                _name(s, name),
                f"`{info['reference']}`" if info.get("reference") else "—",
                str(info["num_identities"]),
                str(info["num_samples"]),
                _fd_cell(dist, d, info["kind"]),
                (f"{d['verdict']} ({_f(d.get('face_score'))})" if d else "—"),
                *[_pm(v[p]["accuracy"], v[p]["std"]) for p in protocols],
                _pm(s["mean_accuracy"][name], s["mean_accuracy_std"][name]),
                _pm(g["mean"], g["mean_std"]) if g else "—",
            ]
        )
    lines += _table(header, rows)
    fold = [s["verification"][n][p]["fold_std"] for n in sets for p in protocols]
    lines += [
        f"10-fold std within one recognizer: {_f(min(fold))}-{_f(max(fold))} points; the "
        "+- above is the spread over training seeds. The real rows' FD column is the real "
        "floor (other real identities against the reference).",
        "",
    ]
    synthetic = [n for n in sets if s["sets"][n]["kind"] == "synthetic"]
    if synthetic:
        verdicts = (dist.get("sets") or {}) if dist else {}
        faces = [n for n in synthetic if verdicts.get(n, {}).get("verdict") != "not faces"]
        best = min(faces or synthetic, key=lambda n: s["gap_to_real"][n]["mean"])
        g = s["gap_to_real"][best]
        lines += [
            f"Best synthetic-only set{'' if faces else ' (no set passes the face gate)'}: "
            f"{_name(s, best)}, gap to `real` {_pm(g['mean'], g['mean_std'])} points on the "
            "mean over protocols (the project's goal at GPU scale: within 1 point).",
            "",
        ]
    lines += ["## Gap to the reference row (accuracy points, reference minus set)", ""]
    rows = [
        [_name(s, n), f"`{g['reference']}`", *[_f(g[p]) for p in protocols],
         _pm(g["mean"], g["mean_std"])]
        for n, g in s["gap_to_real"].items()
    ]  # fmt: skip
    lines += _table(["training set", "vs", *protocols, "mean"], rows)
    if dist:
        ref = dist["reference"]
        lines += [
            "## Distance to real faces and the face gate (the judge's embedding space)",
            "",
            f"All sets are compared at n = {ref['images']} images (spread over their "
            "identities) with one real reference (half of the real identities). W = sqrt(FD). "
            "**Floor**: real images of the other half's identities with the set's own structure "
            "(as many identities, as many images of each): what a perfect generator of "
            "that many identities scores. **Texture**: the floor's images phase-scrambled "
            "(amplitude spectrum kept, structure lost). Face score = (W_texture - W_set) / "
            "(W_texture - W_floor): 1 = as close as real faces, 0 = as far as textures; a "
            "set passes (faces) at >= 0.5, i.e. closer to real faces than to textures. "
            f"The judge's scale, spread over {ref['images']} real images: floor FD "
            f"{_f(ref['fd_real_floor'], 3)}, texture FD {_f(ref['fd_texture'], 3)}.",
            "",
        ]
        rows = [
            [_name(s, g), str(d["images"]), str(d.get("identities", "—")), _f(d["fd"], 3),
             _f(d.get("fd_floor"), 3), _f(d.get("fd_texture"), 3), _f(d.get("face_score")),
             d["verdict"]]
            for g, d in dist["sets"].items()
        ]  # fmt: skip
        lines += _table(
            ["generator", "images", "identities", "FD to real", "floor", "texture",
             "face score", "gate"],
            rows,
        )  # fmt: skip
    sc = s.get("scaling")
    if sc:
        lines += [
            f"## Identity scaling: `{sc['generator']}` ({sc['chosen_by']})",
            "",
            f"{sc['per_identity']} images per identity requested; the recognizer recipe and "
            "seeds as above; gap to `real` of the table (its image count is fixed).",
            "",
        ]
        rows = [
            [
                str(r["identities"]),
                str(r["trained_identities"]),
                str(r["images"]),
                _pm(r["mean_accuracy"]["mean"], r["mean_accuracy"]["std"]),
                _f(r["gap_to_real"]),
            ]
            for r in sc["rows"]
        ]
        lines += _table(
            ["identities", "after QC view", "images", "mean accuracy", "gap to real"], rows
        )
    if s.get("frcsyn"):
        lines += [
            "## FRCSyn (thresholds from held-out training-side comparisons)",
            "",
            "Task 1: accuracy per demographic group on bupt, AVG / SD / TO = AVG - SD; "
            "Task 2: AVG over the datasets the tree has. GAP = (REAL - SYN) / SYN x 100 on "
            "the ranking metric (FRCSyn's reconstruction, docs/frcsyn.md), where REAL is the "
            "reference row's recognizer of the same seed. Synthetic-only sets are scored as "
            "sub-tasks x.1, real + synthetic as x.3. Mean +- std over seeds.",
            "",
        ]
        rows = []
        for name, f in s["frcsyn"].items():
            t1, t2 = f.get("task1", {}), f.get("task2", {})
            p1, p2 = t1.get("proposed", {}), t2.get("proposed", {})
            e1, e2 = t1.get("proposed_std", {}), t2.get("proposed_std", {})
            rows.append(
                [
                    _name(s, name),
                    "baseline" if s["sets"][name]["kind"] == "real" else t1.get("subtask", "—"),
                    _pm(p1.get("AVG"), e1.get("AVG")),
                    _pm(p1.get("SD"), e1.get("SD")),
                    _pm(p1.get("TO"), e1.get("TO")),
                    _pm(t1.get("GAP"), t1.get("GAP_std")),
                    _pm(p2.get("AVG"), e2.get("AVG")),
                    _pm(t2.get("GAP"), t2.get("GAP_std")),
                ]
            )
        lines += _table(
            [
                "training set",
                "sub-task",
                "T1 AVG",
                "T1 SD",
                "T1 TO",
                "T1 GAP %",
                "T2 AVG",
                "T2 GAP %",
            ],
            rows,
        )
    lines += ["## Generated sets: QC by the judge, anchors and their novelty", ""]
    rows = []
    for g, info in s["generation"].items():
        qc, a = info["qc"], info.get("anchors") or {}
        near = a.get("anchor_to_nearest_training_cos") or {}
        own = a.get("training_nearest_neighbour_cos") or {}
        rows.append(
            [
                f"`{g}`",
                _f(qc.get("identity_consistency"), 3),
                _f(qc.get("nearest_identity_similarity"), 3),
                str(qc.get("not_separated", "—")),
                _f(qc.get("gallery_similarity"), 3),
                str(qc.get("leak", "—")),
                a.get("anchor_region", "—"),
                (
                    f"{_f(a.get('max_cos_to_training'), 2)} ({a.get('anchors_moved', '?')} moved)"
                    if a.get("guard")
                    else "off"
                ),
                f"{_f(near.get('mean'), 3)} / {_f(near.get('max'), 3)}",
                f"{_f(own.get('mean'), 3)} / {_f(own.get('max'), 3)}",
            ]
        )
    lines += _table(
        [
            "generator",
            "consistency",
            "nearest other id",
            "not separated",
            "cos to nearest real id",
            "leak flags",
            "anchors",
            "novelty margin (max cos)",
            "anchor->nearest training id (mean / max)",
            "training id->nearest training id (mean / max)",
        ],
        rows,
    )
    gal = s.get("gallery") or {}
    nn = gal.get("real_nearest_neighbour_cos") or {}
    lines += [
        "Consistency, nearest other identity and cos to the nearest real training identity "
        "are means over identities by the judge; for scale, real training identities' "
        f"nearest other real identity is at cos {_f(nn.get('mean'), 3)} (p95 "
        f"{_f(nn.get('p95'), 3)}) by the same judge. Anchor novelty is measured in each "
        "generator's conditioning-encoder space against its stored training identities.",
        "",
    ]
    warnings = [(g, w) for g, info in s["generation"].items() for w in info.get("warnings", [])]
    if warnings:
        lines += ["**Warnings**", ""] + [f"- `{g}`: {w}" for g, w in warnings] + [""]
    var = s.get("variation")
    if var:
        reg = var["regressor"]
        attrs = reg["attributes"]
        lines += [
            "## Intra-class variation (within-identity SD of pose and age)",
            "",
            "Measured by a small CNN regressor trained on world images' ground-truth style "
            "coefficients; held-out error (MAE): "
            + ", ".join(f"{a} {_f(reg['held_out_mae'][a], 1)}" for a in attrs)
            + " (correlation "
            + ", ".join(f"{a} {_f(reg['held_out_corr'][a], 2)}" for a in attrs)
            + "). *recorded*: ground truth for real images, the requested condition for "
            "generated ones.",
            "",
        ]
        rows = []
        for name, v in var["sets"].items():
            rec = v.get("recorded") or {}
            rows.append(
                [
                    f"`{name}`",
                    *[_f(v["predicted"][a], 1) for a in attrs],
                    *[_f(rec.get(a), 1) for a in attrs],
                ]
            )
        lines += _table(
            [
                "training set",
                *[f"{a} (measured)" for a in attrs],
                *[f"{a} (recorded)" for a in attrs],
            ],
            rows,
        )
    st = s["stages"]
    lines += [
        "## Run",
        "",
        f"- Stages run this time: {len(st['executed'])}, found complete: {len(st['skipped'])}; "
        f"wall time of this run {_f(s['total_seconds'], 0)} s; compute recorded by all "
        f"stages {_f(sum(st['seconds'].values()), 0)} s.",
        f"- Stage outputs: `{s['stages_dir']}`; machine-readable: `benchmark.json`; plot: "
        "`accuracy.png`.",
        "",
    ]
    return "\n".join(lines)


def plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = s["protocols"]
    sets = list(s["sets"])
    x = np.arange(len(protocols))
    width = 0.8 / max(len(sets), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(protocols) + 2), 4))
    for k, name in enumerate(sets):
        v = s["verification"][name]
        acc = [v[p]["accuracy"] for p in protocols]
        std = [v[p]["std"] for p in protocols]
        ax.bar(x + (k - (len(sets) - 1) / 2) * width, acc, width, yerr=std, label=name, capsize=2)
    ax.set_xticks(x, protocols)
    ax.set_ylabel("10-fold verification accuracy (%)")
    lo = min(s["verification"][n][p]["accuracy"] for n in sets for p in protocols)
    ax.set_ylim(max(0, min(50, lo - 5)), 100)
    ax.axhline(50, color="grey", lw=0.5, ls="--")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"{s['name']}: accuracy per protocol per training set")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_report(out_dir: str | Path, summary: dict) -> dict[str, str]:
    out = Path(out_dir)
    paths = {
        "markdown": out / "benchmark.md",
        "json": out / "benchmark.json",
        "plot": out / "accuracy.png",
    }
    atomic_write_json(paths["json"], summary)
    plot(summary, paths["plot"])
    atomic_write_text(paths["markdown"], markdown(summary))
    return {k: str(v) for k, v in paths.items()}
