"""FRCSyn run report: metrics.json, report.md with the sub-task's rule, and plots."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from synthface.recognition.evaluation.report import (
    markdown_table,
    plot_curves,
    plot_group_accuracy,
    plot_score_hists,
    write_json,
    write_text,
)
from synthface.recognition.frcsyn.groups import GroupMap, assign_groups
from synthface.recognition.frcsyn.metrics import dataset_metrics, gap, system_metrics
from synthface.recognition.frcsyn.rules import BUPT_GROUPS, SYSTEMS, SubTask

__all__ = ["compute_run_metrics", "write_run_report"]


def compute_run_metrics(
    subtask: SubTask, results: Mapping, thresholds: Mapping, group_map: GroupMap | None = None
) -> dict:
    """Metrics of both systems; empty when the evaluation tree has no ground truth.

    BUPT's demographic groups come from ``group_map`` (subject -> group) or, without
    one, from the first path component; ``group_assignment`` records which and the set.
    """
    from synthface.recognition.frcsyn.scoring import format_submission

    if any(cset.labels is None for cset, _ in results["proposed"].values()):
        return {}
    bupt_groups, assignment = None, None
    if "bupt" in results["proposed"]:
        cset = results["proposed"]["bupt"][0]
        bupt_groups, assignment = assign_groups(cset.first, group_map, where="bupt")
    systems = {}
    for system in SYSTEMS:
        per = {}
        for d, (cset, scores) in results[system].items():
            _, decisions = format_submission(scores, thresholds[system].value)
            per[d] = dataset_metrics(
                scores, decisions, cset.labels, bupt_groups if d == "bupt" else None
            )
        systems[system] = {"datasets": per, **system_metrics(subtask.task, per)}
    real = systems["baseline"]["ranking_value"]
    syn = systems["proposed"]["ranking_value"]
    return {
        "edition": subtask.edition,
        "subtask": subtask.id,
        "ranking_metric": subtask.ranking_metric,
        "group_assignment": assignment,
        "systems": systems,
        "GAP": gap(real, syn),
        "GAP_formula": f"(REAL - SYN) / SYN x 100 on {subtask.ranking_metric}; "
        "REAL = baseline system, SYN = proposed system",
    }


def write_run_report(
    out_dir,
    subtask: SubTask,
    results: Mapping,
    thresholds: Mapping,
    *,
    plots: bool = True,
    group_map: GroupMap | None = None,
) -> dict:
    out = Path(out_dir)
    metrics = compute_run_metrics(subtask, results, thresholds, group_map)
    write_json(out / "metrics.json", metrics)
    md = [
        f"# FRCSyn {subtask.edition} sub-task {subtask.id}",
        "",
        f"- Goal: Task {subtask.task}, {subtask.goal}; ranking metric **{subtask.ranking_metric}**.",
        f"- Training-data rule: {subtask.rule} (source: {subtask.source}).",
        "- Decision: same person iff score >= threshold; thresholds chosen on training-side "
        "calibration comparisons only.",
        "",
        "## Thresholds",
        "",
        markdown_table(
            [
                "system",
                "threshold",
                "method",
                "calibration FMR",
                "calibration FNMR",
                "genuine",
                "impostor",
                "source",
            ],
            [
                [
                    s,
                    f"{r.value:.6f}",
                    r.method,
                    f"{r.fmr:.4f}",
                    f"{r.fnmr:.4f}",
                    r.num_genuine,
                    r.num_impostor,
                    r.source,
                ]
                for s, r in thresholds.items()
            ],
        ),
        "",
    ]
    if not metrics:
        md += ["No ground truth in the evaluation tree: scores and decisions only.", ""]
        write_text(out / "report.md", "\n".join(md))
        return metrics

    rows = []
    for system in SYSTEMS:
        m = metrics["systems"][system]
        for d, dm in m["datasets"].items():
            rows.append(
                [
                    system,
                    d,
                    f"{dm['accuracy']:.2f}",
                    f"{dm['fnmr_at_fmr_1pct']:.2f}",
                    f"{dm['auc']:.2f}",
                ]
            )
    md += [
        "## Per dataset",
        "",
        markdown_table(["system", "dataset", "accuracy (%)", "FNMR@FMR=1% (%)", "AUC (%)"], rows),
        "",
    ]
    head = ["system", "AVG", "SD"] + (["TO"] if subtask.task == 1 else []) + ["FNMR@FMR=1%", "AUC"]
    rank_rows = []
    for system in SYSTEMS:
        m = metrics["systems"][system]
        row = [system, f"{m['AVG']:.2f}", f"{m['SD']:.2f}"]
        if subtask.task == 1:
            row.append(f"{m['TO']:.2f}")
        rank_rows.append([*row, f"{m['FNMR@FMR=1%']:.2f}", f"{m['AUC']:.2f}"])
    md += [
        "## Ranking",
        "",
        markdown_table(head, rank_rows),
        "",
        f"GAP to real = {metrics['GAP']:.2f} % ({metrics['GAP_formula']}; the organisers' "
        "formula is unpublished, negative means the proposed system beats the real-data baseline).",
        "",
    ]
    assignment = metrics.get("group_assignment")
    if assignment:
        where = (
            f"group map `{assignment['path']}` (sha256 {assignment['sha256'][:12]})"
            if assignment["source"] == "group map"
            else "the first path component of each comparison's first image (no group map)"
        )
        md += [
            f"BUPT groups ({len(assignment['groups'])}) from {where}: "
            + ", ".join(assignment["groups"])
            + ".",
            "",
        ]
        if subtask.task == 1 and len(assignment["groups"]) != len(BUPT_GROUPS):
            md += [
                f"**Note:** FRCSyn Task 1 ranks over {len(BUPT_GROUPS)} groups (4 ethnicities x "
                "2 genders); pass a group map (`--group-map`) to score those.",
                "",
            ]
    if subtask.task == 1:
        md += ["SD is the population standard deviation (ddof=0) over the groups.", ""]

    if plots:
        md += _plots(out, results, thresholds, metrics)
    md.append("")
    write_text(out / "report.md", "\n".join(md))
    return metrics


def _plots(out: Path, results: Mapping, thresholds: Mapping, metrics: dict) -> list[str]:
    """One group-accuracy chart per system (when BUPT groups exist); per dataset one
    ROC+DET figure and one histogram figure holding both systems."""
    md = ["## Plots", ""]
    for system in SYSTEMS:
        groups = metrics["systems"][system]["datasets"].get("bupt", {}).get("groups")
        if groups:
            name = f"groups_{system}.png"
            plot_group_accuracy(
                out / name,
                {g: v / 100 for g, v in groups.items()},
                title=f"{system}: accuracy per group (bupt)",
            )
            md.append(f"![{name}]({name})")
    for d in results["proposed"]:
        curves, panels = {}, {}
        for system in SYSTEMS:
            cset, scores = results[system][d]
            curves[system] = (cset.labels, scores)
            panels[f"{d} / {system}"] = (cset.labels, scores, thresholds[system].value)
        plot_curves(out / f"curves_{d}.png", curves, title=d)
        plot_score_hists(out / f"hist_{d}.png", panels)
        md.append(f"![curves_{d}](curves_{d}.png) ![hist_{d}](hist_{d}.png)")
    return md
