"""FRCSyn metrics: accuracy from decisions, AVG / SD / TO, FNMR@FMR=1 %, AUC and GAP.

Definitions used (``docs/frcsyn.md`` gives sources and what is unpublished):

* accuracy = share of comparisons whose submitted decision equals the ground truth (%);
* Task 1: AVG and SD = mean and *population* standard deviation (numpy ``ddof=0``; the
  organisers do not say which) of the accuracy over the demographic groups;
  **TO = AVG - SD** is the ranking metric;
* Task 2: AVG = mean accuracy over the evaluation datasets (ranking metric);
* FNMR@FMR=1 % and AUC come from the submitted *scores* (not decisions); with several
  datasets the reported value is their mean, per-dataset values are listed too;
* GAP = (REAL - SYN) / SYN x 100, REAL being the baseline (real-data) system's ranking
  metric and SYN the proposed system's; negative = the proposed system beats real data.
  The organisers' exact formula is not published; this is the one the reference notes
  reconstruct from the result tables.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from synthface.recognition.evaluation import roc

__all__ = ["accuracy", "dataset_metrics", "gap", "group_accuracies", "system_metrics"]


def accuracy(decisions, labels) -> float:
    decisions = np.asarray(decisions).astype(bool)
    labels = np.asarray(labels, dtype=bool)
    return float(np.mean(decisions == labels) * 100.0)


def group_accuracies(decisions, labels, groups) -> dict[str, float]:
    decisions = np.asarray(decisions).astype(bool)
    labels = np.asarray(labels, dtype=bool)
    groups = np.asarray(groups)
    return {
        str(g): accuracy(decisions[groups == g], labels[groups == g]) for g in sorted(set(groups))
    }


def dataset_metrics(scores, decisions, labels, groups=None) -> dict:
    """Accuracy, FNMR@FMR=1 % and AUC (all in %) for one dataset, plus per-group accuracy."""
    out = {
        "accuracy": accuracy(decisions, labels),
        "fnmr_at_fmr_1pct": roc.fnmr_at_fmr(labels, scores, 0.01)[0] * 100.0,
        "auc": roc.auc(labels, scores) * 100.0,
        "num_comparisons": int(np.size(labels)),
    }
    if groups is not None:
        accs = group_accuracies(decisions, labels, groups)
        vals = np.array(list(accs.values()))
        out["groups"] = accs
        out["group_avg"] = float(vals.mean())
        out["group_sd"] = float(vals.std())
    return out


def system_metrics(task: int, per_dataset: Mapping[str, dict]) -> dict:
    """Ranking metrics of one system from its :func:`dataset_metrics` per dataset."""
    if task == 1:
        bupt = per_dataset["bupt"]
        avg, sd = bupt["group_avg"], bupt["group_sd"]
        out = {"AVG": avg, "SD": sd, "TO": avg - sd, "ranking_metric": "TO"}
    else:
        accs = np.array([m["accuracy"] for m in per_dataset.values()])
        out = {"AVG": float(accs.mean()), "SD": float(accs.std()), "ranking_metric": "AVG"}
    out["FNMR@FMR=1%"] = float(np.mean([m["fnmr_at_fmr_1pct"] for m in per_dataset.values()]))
    out["AUC"] = float(np.mean([m["auc"] for m in per_dataset.values()]))
    out["ranking_value"] = out[out["ranking_metric"]]
    return out


def gap(real: float, syn: float) -> float:
    """GAP to real (%) = (REAL - SYN) / SYN x 100."""
    return float((real - syn) / syn * 100.0)
