"""Evaluation reports: ``metrics.json`` for machines, ``report.md`` for people, PNG plots.

Plots are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas, so no global
backend is switched and nothing needs a display. PNGs are saved without the software
tag so re-running a report rewrites identical files.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_write_bytes
from synthface.recognition.evaluation import roc

__all__ = [
    "markdown_table",
    "plot_curves",
    "plot_group_accuracy",
    "plot_roc_det",
    "plot_score_hist",
    "plot_score_hists",
    "write_json",
    "write_text",
]


def write_json(path, data) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n"
    atomic_write_bytes(path, text.encode())


def write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _figure(w=5.0, h=4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def _draw_roc_det(ax_r, ax_d, curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Draw the ROC and DET lines and fix the log axes' limits when a curve has no point.

    Zero rates cannot sit on a log axis. Scores that separate perfectly leave the DET with no
    point at all (FNMR is 0 wherever FMR > 0), and matplotlib then fails at save time, after
    the metrics were computed: such a curve is said in words and the axes span the rates
    that the pair counts can resolve.
    """
    floor_d = 1.0
    empty: list[str] = []
    for label, (issame, sim) in curves.items():
        c = roc.roc_curve(issame, sim, drop_intermediate=True)
        labels = np.asarray(issame, bool).ravel()
        n_gen, n_imp = int(labels.sum()), int((~labels).sum())
        floor_d = min(floor_d, 1.0 / n_imp, 1.0 / n_gen)
        keep = c.fpr > 0
        ax_r.plot(c.fpr[keep], c.tpr[keep], label=label)
        fnmr = 1.0 - c.tpr
        keep = (c.fpr > 0) & (fnmr > 0)
        if keep.any():
            ax_d.plot(c.fpr[keep], fnmr[keep], label=label)
        else:
            empty.append(label)
    if empty:
        ax_d.set_xlim(floor_d / 2, 1.0)
        ax_d.set_ylim(floor_d / 2, 1.0)
        ax_d.text(
            0.5,
            0.5,
            "FNMR = 0 at every FMR > 0 (perfect separation):\n" + ", ".join(empty),
            transform=ax_d.transAxes,
            ha="center",
            va="center",
            fontsize="small",
        )


def plot_roc_det(path_roc, path_det, curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """ROC (TAR vs log FAR) and DET (FNMR vs FMR, log-log) for ``{label: (issame, similarity)}``."""
    fig_r, fig_d = _figure(), _figure()
    ax_r, ax_d = fig_r.add_subplot(), fig_d.add_subplot()
    _draw_roc_det(ax_r, ax_d, curves)
    ax_r.set_xscale("log")
    ax_r.set_xlabel("FAR (false accept rate)")
    ax_r.set_ylabel("TAR (true accept rate)")
    ax_r.set_title("ROC")
    ax_r.grid(True, which="both", alpha=0.3)
    ax_d.set_xscale("log")
    ax_d.set_yscale("log")
    ax_d.set_xlabel("FMR")
    ax_d.set_ylabel("FNMR")
    ax_d.set_title("DET")
    ax_d.grid(True, which="both", alpha=0.3)
    for ax in (ax_r, ax_d):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    _save(fig_r, path_roc)
    _save(fig_d, path_det)


def plot_curves(
    path, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, title: str = ""
) -> None:
    """ROC (left) and DET (right) in one PNG for ``{label: (issame, similarity)}``."""
    fig = _figure(10.0, 4.0)
    ax_r, ax_d = fig.subplots(1, 2)
    _draw_roc_det(ax_r, ax_d, curves)
    ax_r.set(xscale="log", xlabel="FAR", ylabel="TAR", title=f"ROC {title}".strip())
    ax_d.set(xscale="log", yscale="log", xlabel="FMR", ylabel="FNMR", title=f"DET {title}".strip())
    for ax in (ax_r, ax_d):
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def plot_score_hists(
    path, panels: Mapping[str, tuple[np.ndarray, np.ndarray, float | None]]
) -> None:
    """Genuine/impostor histograms side by side, one panel per ``{title: (issame, scores, thr)}``."""
    fig = _figure(5.0 * max(1, len(panels)), 4.0)
    axes = np.atleast_1d(fig.subplots(1, max(1, len(panels))))
    for ax, (title, (issame, scores, thr)) in zip(axes, panels.items()):
        _hist_axes(ax, np.asarray(issame, bool), np.asarray(scores, float), title, thr)
    fig.tight_layout()
    _save(fig, path)


def _hist_axes(ax, issame, scores, title, threshold) -> None:
    bins = np.linspace(scores.min(), scores.max(), 61) if scores.size else 10
    ax.hist(scores[~issame], bins=bins, alpha=0.6, density=True, label="impostor")
    ax.hist(scores[issame], bins=bins, alpha=0.6, density=True, label="genuine")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.4f}")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.set_title(title or "score distributions")
    ax.legend(fontsize="small")


def plot_score_hist(
    path, issame, scores, *, title: str = "", threshold: float | None = None
) -> None:
    """Genuine vs impostor score histograms on shared bins (threshold drawn if given)."""
    fig = _figure()
    ax = fig.add_subplot()
    _hist_axes(ax, np.asarray(issame, bool), np.asarray(scores, float), title, threshold)
    _save(fig, path)


def plot_group_accuracy(path, groups: Mapping[str, float], *, title: str = "") -> None:
    """Bar chart of accuracy per demographic group with the mean and +-1 SD band."""
    names = list(groups)
    vals = np.array([groups[n] for n in names], float) * 100
    fig = _figure(max(5.0, 0.7 * len(names) + 2), 4.0)
    ax = fig.add_subplot()
    ax.bar(range(len(names)), vals, color="tab:blue")
    if vals.size:
        mean, sd = vals.mean(), vals.std()
        ax.axhline(mean, color="k", label=f"AVG {mean:.2f}")
        ax.axhspan(mean - sd, mean + sd, color="k", alpha=0.1, label=f"SD {sd:.2f}")
        lo = max(0.0, vals.min() - 5)
        ax.set_ylim(lo, min(100.0, vals.max() + 2))
        ax.legend(fontsize="small")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "accuracy per group")
    fig.tight_layout()
    _save(fig, path)


def verification_report(
    out_dir,
    results: Sequence,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    title: str = "Verification",
) -> dict:
    """Write metrics.json, report.md, roc.png, det.png and one histogram per result.

    ``results`` are :class:`VerificationResult`; ``curves`` maps each result's key
    (``name/metric``) to ``(issame, similarity)`` for the plots.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {"results": [r.to_dict() for r in results]}
    write_json(out / "metrics.json", data)
    plot_roc_det(out / "roc.png", out / "det.png", curves)
    rows = []
    hists = []
    for r in results:
        key = f"{r.name}/{r.metric}"
        rows.append(
            [
                r.name,
                r.metric,
                r.num_pairs,
                f"{r.accuracy * 100:.2f} +- {r.accuracy_std * 100:.2f}",
                f"{r.val * 100:.2f} +- {r.val_std * 100:.2f} @ {r.far * 100:.3f}",
                f"{r.roc_auc * 100:.2f}",
                f"{r.eer * 100:.2f}",
                f"{r.fnmr_at_fmr_1pct * 100:.2f}",
                "" if r.xnorm is None else f"{r.xnorm:.3f}",
            ]
        )
        if key in curves:
            fname = f"hist_{r.name}_{r.metric}.png".replace("/", "_")
            issame, sim = curves[key]
            plot_score_hist(out / fname, issame, sim, title=key)
            hists.append(fname)
    md = [
        f"# {title}",
        "",
        "insightface protocol: flip-sum features, L2 norm, 10 contiguous folds, threshold chosen "
        "on the other 9 folds; accuracy is mean +- std over folds (%). VAL is at FAR=1e-3 "
        "(mean FAR measured on held-out folds shown after @). Cosine rows use an exact "
        "threshold sweep on cosine similarity.",
        "",
        markdown_table(
            [
                "set",
                "metric",
                "pairs",
                "accuracy",
                "VAL @ FAR",
                "AUC",
                "EER",
                "FNMR@FMR=1%",
                "XNorm",
            ],
            rows,
        ),
        "",
        "![ROC](roc.png) ![DET](det.png)",
        "",
        *[f"![{h}]({h})" for h in hists],
        "",
    ]
    write_text(out / "report.md", "\n".join(md))
    return data


def ijb_report(out_dir, result, issame, scores) -> dict:
    """metrics.json, report.md, ROC/DET and a score histogram for one IJB evaluation."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_dict()
    write_json(out / "metrics.json", data)
    plot_roc_det(out / "roc.png", out / "det.png", {result.name: (issame, scores)})
    plot_score_hist(out / "hist.png", issame, scores, title=result.name)
    rows = [[k, f"{v * 100:.2f}"] for k, v in result.tar_at_far.items()]
    md = [
        f"# {result.name} 1:1 verification",
        "",
        f"{result.num_pairs} template pairs ({result.num_genuine} genuine), "
        f"{result.num_templates} templates; mode {json.dumps(result.mode, sort_keys=True)}.",
        "TAR is read at the ROC point with the nearest FAR (insightface eval_ijbc).",
        "",
        markdown_table(["FAR", "TAR (%)"], rows),
        "",
        f"AUC {result.roc_auc * 100:.2f} %, EER {result.eer * 100:.2f} %",
        "",
        "![ROC](roc.png) ![DET](det.png) ![scores](hist.png)",
        "",
    ]
    write_text(out / "report.md", "\n".join(md))
    return data
