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


def markdown(s: dict) -> str:
    protocols = s["protocols"]
    sets = list(s["sets"])
    lines = [
        f"# Benchmark `{s['name']}`: synthetic identities vs real data",
        "",
        f"- Budget per generator: {s['budget']['identities']} identities x "
        f"{s['budget']['per_identity']} images (seed {s['budget']['seed']}); the real "
        f"baseline trains on the same number of real images; real + synthetic adds the "
        f"synthetic set to all {s['real']['num_samples']} real training images "
        f"({s['real']['num_identities']} identities).",
        f"- One recognizer recipe for every training set: `{s['recipe']}`.",
        "- Verification: 10-fold accuracy (%) on held-out identities, the same code as "
        "`synthface eval verify --bin` (mean +- std over folds). **Gap to real** = real "
        "baseline accuracy minus the set's, in points (positive = below real).",
        f"- QC judge: an independent recognizer (`{s['judge']}`), trained on other "
        "identities with another seed; no generator was conditioned on it.",
        "",
        "## Verification accuracy (%)",
        "",
    ]
    header = ["training set", "images", *protocols, "mean"]
    rows = []
    for name in sets:
        v = s["verification"][name]
        rows.append(
            [
                f"`{name}`",
                str(s["sets"][name]["num_samples"]),
                *[f"{_f(v[p]['accuracy'])} +- {_f(v[p]['std'])}" for p in protocols],
                _f(s["mean_accuracy"][name]),
            ]
        )
    lines += _table(header, rows)
    synthetic = [n for n in sets if s["sets"][n]["kind"] == "synthetic"]
    if synthetic:
        best = min(synthetic, key=lambda n: s["gap_to_real"][n]["mean"])
        lines += [
            f"Best synthetic-only set: `{best}`, gap to real {_f(s['gap_to_real'][best]['mean'])} "
            "points on the mean over protocols (positive = below the real baseline; the "
            "project's goal at GPU scale: within 1 point).",
            "",
        ]
    lines += ["## Gap to real (accuracy points, real minus set)", ""]
    rows = [
        [f"`{n}`", *[_f(g[p]) for p in protocols], _f(g["mean"])]
        for n, g in s["gap_to_real"].items()
    ]
    lines += _table(["training set", *protocols, "mean"], rows)
    if s.get("frcsyn"):
        lines += [
            "## FRCSyn (thresholds from held-out training-side comparisons)",
            "",
            "Task 1: accuracy per demographic group on bupt, AVG / SD / TO = AVG - SD; "
            "Task 2: AVG over the datasets the tree has. GAP = (REAL - SYN) / SYN x 100 on "
            "the ranking metric (FRCSyn's reconstruction, docs/frcsyn.md). Synthetic-only "
            "sets are scored as sub-tasks x.1, real + synthetic as x.3.",
            "",
        ]
        rows = []
        for name, f in s["frcsyn"].items():
            t1, t2 = f.get("task1", {}), f.get("task2", {})
            p1, p2 = t1.get("proposed", {}), t2.get("proposed", {})
            rows.append(
                [
                    f"`{name}`",
                    "baseline" if s["sets"][name]["kind"] == "real" else t1.get("subtask", "—"),
                    _f(p1.get("AVG")),
                    _f(p1.get("SD")),
                    _f(p1.get("TO")),
                    _f(t1.get("GAP")),
                    _f(p2.get("AVG")),
                    _f(t2.get("GAP")),
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
