"""Identity anchors: Tammes-style packing of N points on the unit hypersphere S^{d-1}.

ID³ spreads its virtual identities by (approximately) solving the Tammes problem —
maximise the minimum pairwise angle — so that classes are as far apart as the sphere
allows. The exact problem is a non-smooth max-min; we minimise its smooth surrogate, a
log-sum-exp ("soft maximum") of each point's cosines to all others, by projected
gradient steps on the sphere. The gradient of point i's soft maximum is the
softmax-weighted mean of the other points, so one step moves each point away from its
nearest neighbours along the tangent plane.

Blockwise: the N x N cosine matrix is never materialised; rows are processed in blocks of
``block`` points against all N (memory O(block * N)), which is what makes 100k x 512 fit
on one GPU and 10k x 512 run on a CPU. The temperature is annealed so that early steps
spread points globally and late steps concentrate on the closest pairs. Run time is
O(iterations * N^2 * d).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch


def random_unit_vectors(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return torch.nn.functional.normalize(
        torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1
    ).float()


@torch.no_grad()
def nearest_neighbour_cosines(x: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """For each row, the largest cosine to any other row (blockwise)."""
    x = torch.nn.functional.normalize(x.float(), dim=1)
    n = x.shape[0]
    out = torch.empty(n, device=x.device)
    for s in range(0, n, block):
        sim = x[s : s + block] @ x.T
        idx = torch.arange(s, min(s + block, n), device=x.device)
        sim[idx - s, idx] = -2.0
        out[s : s + block] = sim.max(dim=1).values
    return out


def packing_stats(x: torch.Tensor, block: int = 4096) -> dict[str, float]:
    """min angle (deg), max and mean nearest-neighbour cosine."""
    nn_cos = nearest_neighbour_cosines(x, block).double()
    max_cos = float(nn_cos.max())
    return {
        "max_nn_cos": max_cos,
        "mean_nn_cos": float(nn_cos.mean()),
        "min_angle_deg": math.degrees(math.acos(max(-1.0, min(1.0, max_cos)))),
    }


def tammes_memory_bytes(n: int, dim: int, block: int) -> int:
    """Peak bytes of :func:`tammes_anchors`: the float64 start (then float32 points) and, per
    block, three ``block x n`` float32 matrices (similarities, scaled, softmax weights)."""
    b = min(block, n)
    return 20 * n * dim + 16 * n + 12 * b * n + 16 * b * dim


def check_tammes_memory(n: int, dim: int, block: int, device: str | torch.device = "cpu") -> None:
    """Refuse, before allocating, a packing that would not fit the device's memory."""
    from synthface.pipeline.limits import check_memory

    what = f"Tammes anchors for {n} identities x {dim} dims (block {min(block, n)})"
    hint = "use fewer identities or a smaller anchor block (id3.anchor_block)"
    check_memory(tammes_memory_bytes(n, dim, block), what, hint, device)


@torch.no_grad()
def tammes_anchors(
    n: int,
    dim: int,
    *,
    iterations: int = 200,
    block: int = 4096,
    seed: int = 0,
    lr: float = 0.5,
    t_start: float = 0.05,
    t_end: float = 0.005,
    device: str | torch.device = "cpu",
    progress: Callable[[int, float], None] | None = None,
) -> torch.Tensor:
    """N unit vectors in R^dim with a large minimum pairwise angle (float32, on ``device``).

    ``iterations`` full sweeps; each sweep visits all points once, block by block, in a
    seeded random order. Deterministic for a given seed and device.
    """
    if n < 2:
        return random_unit_vectors(max(n, 0), dim, seed).to(device)
    check_tammes_memory(n, dim, block, device)
    x = random_unit_vectors(n, dim, seed).to(device)
    g = torch.Generator().manual_seed(int(seed) + 1)
    for it in range(iterations):
        frac = it / max(iterations - 1, 1)
        temp = t_start * (t_end / t_start) ** frac
        step = lr * (1.0 - 0.9 * frac)
        order = torch.randperm(n, generator=g).to(device)
        for s in range(0, n, block):
            idx = order[s : s + block]
            xb = x[idx]
            sim = xb @ x.T
            sim[torch.arange(len(idx), device=x.device), idx] = -math.inf
            w = torch.softmax(sim / temp, dim=1)
            grad = w @ x
            grad = grad - (grad * xb).sum(1, keepdim=True) * xb  # tangent component
            x[idx] = torch.nn.functional.normalize(xb - step * grad, dim=1)
        if progress is not None:
            progress(it, temp)
    return x


@torch.no_grad()
def region_statistics(
    reference: np.ndarray | torch.Tensor, *, max_dims: int = 64
) -> dict[str, torch.Tensor]:
    """Mean, principal axes and variances of the rows of ``reference`` (L2-normalised first).

    Returns float64 tensors ``mean`` (D), ``axes`` (K, D), ``variances`` (K) for the top
    ``K = min(max_dims, rows, D)`` axes and ``total_variance`` (the sum over *all* axes,
    so a stored top-K still knows which share of the spread it covers).
    """
    ref = torch.as_tensor(np.asarray(reference, dtype=np.float32))
    if ref.ndim != 2 or ref.shape[0] < 3 or not torch.isfinite(ref).all():
        raise ValueError("reference must be a finite (rows >= 3, dim) array")
    ref = torch.nn.functional.normalize(ref.double(), dim=1)
    mean = ref.mean(0)
    _, sv, vt = torch.linalg.svd(ref - mean, full_matrices=False)
    var = sv**2 / (ref.shape[0] - 1)
    k = min(int(max_dims), len(var))
    return {
        "mean": mean,
        "axes": vt[:k],
        "variances": var[:k],
        "total_variance": var.sum(),
    }


@torch.no_grad()
def anchors_in_region(
    stats: dict[str, torch.Tensor],
    n: int,
    *,
    variance: float = 0.95,
    max_dims: int = 64,
    **tammes_kwargs,
) -> torch.Tensor:
    """N anchors packed in the region ``stats`` (from :func:`region_statistics`) describes."""
    if not 0 < variance <= 1:
        raise ValueError(f"variance must be in (0, 1] (got {variance})")
    mean = stats["mean"].double()
    axes = stats["axes"].double()
    var = stats["variances"].double()
    share = torch.cumsum(var, 0) / stats["total_variance"].double()
    k = int(torch.searchsorted(share, torch.tensor(variance, dtype=share.dtype)).item()) + 1
    k = max(2, min(k, max_dims, len(var)))
    z = tammes_anchors(n, k, **tammes_kwargs).double().cpu()
    x = mean + math.sqrt(k) * (z * var[:k].sqrt()) @ axes[:k]
    return torch.nn.functional.normalize(x, dim=1).float()


@torch.no_grad()
def anchors_within(
    reference: np.ndarray | torch.Tensor,
    n: int,
    *,
    variance: float = 0.95,
    max_dims: int = 64,
    **tammes_kwargs,
) -> torch.Tensor:
    """N anchors packed inside the region that real identities' embeddings occupy.

    Whole-sphere anchors ask a generator for identities unlike any it was trained on when
    the recognizer's embeddings fill only a narrow cone (measured in docs/benchmarks.md).
    Here the reference rows (e.g. real identities' mean embeddings) give a mean m and the
    principal axes V_k, s_k covering ``variance`` of their spread (at most ``max_dims``);
    Tammes packing runs on the unit sphere of R^k, and each packed z maps to
    normalize(m + sqrt(k) * (z * s_k) @ V_k), which has the reference's covariance while
    keeping Tammes' separation along those axes. Not part of ID³; an option. A generator
    checkpoint stores these statistics of its training identities
    (``synthface.generators.region``), so generation needs no reference file.
    """
    if not 0 < variance <= 1:
        raise ValueError(f"variance must be in (0, 1] (got {variance})")
    stats = region_statistics(reference, max_dims=max(int(max_dims), 2))
    return anchors_in_region(stats, n, variance=variance, max_dims=max_dims, **tammes_kwargs)


def save_anchors(path, anchors: torch.Tensor | np.ndarray) -> None:
    """Atomic ``.npy`` write (float32)."""
    from synthface.pipeline.atomic import atomic_write

    arr = np.asarray(anchors.cpu() if isinstance(anchors, torch.Tensor) else anchors, np.float32)
    with atomic_write(path) as f:
        np.save(f, arr, allow_pickle=False)
