"""Verification accuracy under PGD: clean accuracy and robust accuracy at several budgets.

Protocol. Pairs keep the 10-fold split of the clean protocol; each fold's threshold is
the best one on the other nine folds' *clean* cosine scores (the deployed system's
threshold). For each budget ``epsilon`` (pixel units), PGD perturbs image A of every
pair with the recognizer's gradient (white box, ``synthface.recognition.attacks``):
genuine pairs are pushed apart, impostor pairs pulled together, against the clean
embedding of image B. Robust accuracy is the held-out accuracy of the attacked scores
at the clean thresholds. No flip test-time augmentation (the attack sees one image).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from synthface.pipeline.errors import InputError
from synthface.recognition.attacks import pgd_attack
from synthface.recognition.evaluation.verification import (
    contiguous_folds,
    exact_thresholds,
    kfold_accuracy,
)


def _inputs(images: np.ndarray, size: int, device: torch.device) -> torch.Tensor:
    from synthface.recognition.training.data import to_model_input

    return to_model_input(torch.from_numpy(np.ascontiguousarray(images)).to(device), size)


def robust_verification(
    backbone: torch.nn.Module,
    images: np.ndarray,
    issame: np.ndarray,
    *,
    epsilons: Sequence[float] = (2.0, 4.0, 8.0),
    steps: int = 10,
    folds: int = 10,
    batch_size: int = 128,
    seed: int = 0,
) -> dict:
    """Clean and robust accuracy of ``backbone`` on pairs ``(images[2i], images[2i+1])``.

    Args:
        backbone: a recognizer backbone (evaluation mode is set here).
        images: uint8 (2P) x H x W x 3, pair i = rows 2i and 2i + 1 (the ``.bin`` order).
        issame: P booleans.
        epsilons: L-inf budgets in pixel units (0..255).
        steps: PGD steps (step size 2.5 * epsilon / steps).
        folds: contiguous folds for the thresholds.

    Returns:
        ``{"clean": acc, "robust": {epsilon: acc}}``; accuracies are means over folds.
    """
    issame = np.asarray(issame, dtype=bool)
    if images.shape[0] != 2 * issame.size:
        raise InputError(f"{images.shape[0]} images for {issame.size} pairs")
    device = next(backbone.parameters()).device
    size = int(backbone.input_size[0])
    backbone.eval()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    @torch.no_grad()
    def embed(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(backbone(x).float(), dim=1)

    a_rows, b_rows = images[0::2], images[1::2]
    clean = np.empty(issame.size)
    attacked = {float(e): np.empty(issame.size) for e in epsilons}
    for lo in range(0, issame.size, batch_size):
        sl = slice(lo, lo + batch_size)
        xa, xb = _inputs(a_rows[sl], size, device), _inputs(b_rows[sl], size, device)
        eb = embed(xb)
        clean[sl] = (embed(xa) * eb).sum(1).cpu().numpy()
        pull = torch.from_numpy(~issame[sl]).to(device)
        for e in attacked:
            adv = pgd_attack(backbone, xa, eb, e, steps=steps, pull=pull, generator=gen)
            attacked[e][sl] = (embed(adv) * eb).sum(1).cpu().numpy()
    dist = -clean
    acc, thresholds, _, _ = kfold_accuracy(dist, issame, exact_thresholds(dist), folds)
    robust = {}
    for e, scores in attacked.items():
        per_fold = [
            float(np.mean((-scores[a:b] < t) == issame[a:b]))
            for (a, b), t in zip(contiguous_folds(issame.size, folds), thresholds)
        ]
        robust[e] = float(np.mean(per_fold))
    return {"clean": float(np.mean(acc)), "robust": robust, "pairs": int(issame.size)}
