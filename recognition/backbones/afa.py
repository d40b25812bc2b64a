"""Adaptive Feature Alignment (AFA; Wang et al., 2021): one backbone for every attack strength.

Adversarial examples shift every layer's feature statistics, and by how much depends on
the attack's strength. AFA gives each BatchNorm a second, adversarial set of statistics
and affine parameters and mixes the two normalised outputs per sample,

    y = (1 - w) * BN_clean(x) + w * BN_adv(x),    w in [0, 1],

with the *fusing weight* ``w`` predicted from the features themselves. Each layer reads
the fine-grained energy of its input normalised by the clean running statistics: per
channel ``c``, ``z_c = log mean_hw(|grad_hw (x_c - mu_c) / sigma_c|^2)`` (neighbouring
pixel differences; ``log`` of the mean squared deviation for 1-d features). Adversarial
perturbations add exactly such fine structure. During adversarial training the attack
strength ``w = epsilon / epsilon_max`` of every row is known, and each layer fits a
ridge regression of ``w`` on ``z`` from running first and second moments (exponential
moving averages kept as buffers, like BatchNorm's statistics):
``w^ = E[w] + (z - E[z]) . (Cov(z) + lambda I)^-1 Cov(z, w)``, clipped to [0, 1]. A
clean image gets a low ``w^`` and (nearly) the clean network, a strongly attacked one a
high ``w^``. A layer mixes with the mean of its own and all earlier layers' estimates,
which is steadier than any single layer. The moments are gathered on the test-time path
(:meth:`AFABackbone.fit_estimators`), never on the training forward, where the given
weights would let a layer read which branch its predecessors took. (A regression fitted from moments rather than a read-out trained by SGD: it is usable
after a few batches, needs no learning rate, and no gradient of it competes with the
recognizer's under gradient clipping. Memory: a C x C moment matrix per BatchNorm. The input image alone is a
poor witness here: the world's sensor noise and JPEG artefacts are as strong as an
8/255 perturbation. On the 32 px world no layer is a better one: neither these
regressions nor a trained conv detector predicts the strength there, so the estimate is
a constant; docs/benchmarks.md, "AFA".)

Training batches hold clean rows first and adversarial rows after (``clean_rows``),
and the fusing weights are given (``fuse``, the targets): the clean BatchNorm
normalises the clean rows with their batch statistics, the adversarial one the
adversarial rows with theirs, and the clean branch of an adversarial row uses the
clean rows' statistics (what the clean running statistics estimate at test time). Each
set of running statistics thus sees only its own kind of data. In evaluation mode both
use their running statistics and each layer uses its own estimate, which stays
differentiable, so white-box attacks see the whole model.

:func:`afa_backbone` wraps any built backbone in place; the registered name ``afa``
rebuilds one from its spec (``{"name": "afa", "base": <base spec>}``), so
``save_recognizer``/``load_recognizer`` and ``load_embedder`` work unchanged and the
exported recognizer estimates its own fusing weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from synthface.recognition.backbones._base import Backbone


class DualBatchNorm(nn.Module):
    """A clean and an adversarial BatchNorm (1-d or 2-d) mixed per sample by a fusing weight.

    ``fuse`` (N given weights), ``clean_rows``, ``trail`` (the estimates of the layers
    before it) and ``fit_target`` are set by :class:`AFABackbone` for one forward pass;
    without ``fuse`` the layer mixes with the mean of ``trail`` and its own estimate. A call
    that estimates (no ``fuse``) appends its estimate (N) to ``trail``; calls with
    ``fit_target`` also update the regression's moments toward it (``momentum``, as
    BatchNorm's).
    """

    def __init__(
        self, bn: nn.modules.batchnorm._BatchNorm, momentum: float = 0.05, ridge: float = 1e-2
    ) -> None:
        super().__init__()
        if not (bn.affine and bn.track_running_stats):
            raise ValueError("AFA needs affine BatchNorms with running statistics")
        self.clean = bn
        self.adv = copy.deepcopy(bn)
        self.momentum, self.ridge = momentum, ridge
        c = bn.num_features
        # running moments of (w, z): E[w], E[w^2], E[z], E[z z^T], E[w z]
        self.register_buffer("m_w", torch.zeros(()))
        self.register_buffer("m_ww", torch.zeros(()))
        self.register_buffer("m_z", torch.zeros(c))
        self.register_buffer("m_zz", torch.zeros(c, c))
        self.register_buffer("m_wz", torch.zeros(c))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.fuse: torch.Tensor | None = None
        self.fit_target: torch.Tensor | None = None
        self.clean_rows: int | None = None
        self.trail: list[torch.Tensor] = []
        self._coef: torch.Tensor | None = None  # cached regression weights (evaluation)

    def _shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (1, -1) + (1,) * (x.dim() - 2)

    def statistics(self, x: torch.Tensor) -> torch.Tensor:
        """N x C: log fine-grained energy of ``x`` in units of the clean running statistics."""
        shape = self._shape(x)
        d = (x.float() - self.clean.running_mean.view(shape)) / torch.sqrt(
            self.clean.running_var.view(shape) + self.clean.eps
        )
        if x.dim() == 4:
            energy = (d[:, :, 1:] - d[:, :, :-1]).square().mean((2, 3)) + (
                d[:, :, :, 1:] - d[:, :, :, :-1]
            ).square().mean((2, 3))
        else:
            energy = d.square().reshape(d.shape[0], d.shape[1], -1).mean(2)
        return torch.log(energy + 1e-6)

    @torch.no_grad()
    def _fit(self, z: torch.Tensor, w: torch.Tensor) -> None:
        w = w.float()
        batch = (w.mean(), (w * w).mean(), z.mean(0), z.t() @ z / len(z), (w[:, None] * z).mean(0))
        one = torch.ones((), device=self.m_w.device)
        m = torch.where(self.fitted, one * self.momentum, one)  # the first batch sets them
        for buf, value in zip((self.m_w, self.m_ww, self.m_z, self.m_zz, self.m_wz), batch):
            buf.mul_(1 - m).add_(m * value)
        self.fitted.fill_(True)
        self._coef = None

    def coefficients(self) -> torch.Tensor:
        """Ridge weights of ``w`` on ``z`` (C), from the moments; cached until they change."""
        if self._coef is None or self.training:
            cov = self.m_zz - torch.outer(self.m_z, self.m_z)
            cov_wz = self.m_wz - self.m_w * self.m_z
            reg = self.ridge * cov.diagonal().mean().clamp_min(1e-6)
            eye = torch.eye(len(cov), device=cov.device, dtype=cov.dtype)
            self._coef = torch.linalg.solve(cov + reg * eye, cov_wz)
        return self._coef

    def estimate_fuse(self, z: torch.Tensor) -> torch.Tensor:
        """The regression's fusing weight of each row (0 before the first fit)."""
        w = self.m_w + (z - self.m_z) @ self.coefficients()
        return torch.where(self.fitted, w.clamp(0.0, 1.0), torch.zeros_like(w))

    def train(self, mode: bool = True) -> DualBatchNorm:
        self._coef = None
        return super().train(mode)

    def _clean_with(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The clean branch of ``x`` normalised with ``ref``'s batch statistics (constants)."""
        dims = [0, *range(2, x.dim())]
        shape = self._shape(x)
        mean = ref.detach().mean(dims).view(shape)
        var = ref.detach().var(dims, unbiased=False).view(shape)
        y = (x - mean) / torch.sqrt(var + self.clean.eps)
        return y * self.clean.weight.view(shape) + self.clean.bias.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fitting = self.fit_target is not None
        if self.fuse is None or fitting:  # given weights need no estimate (training, crafting)
            z = self.statistics(x.detach() if self.training or fitting else x)
            self.trail.append(self.estimate_fuse(z))
            if fitting:
                self._fit(z, self.fit_target)
        w = torch.stack(self.trail).mean(0) if self.fuse is None else self.fuse
        w = w.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))
        if not self.training:
            c = self.clean(x)
            return c + w * (self.adv(x) - c)
        n = x.shape[0] if self.clean_rows is None else self.clean_rows
        if n >= x.shape[0]:  # an all-clean training batch
            return self.clean(x)
        if n < 2:
            raise ValueError(f"AFA training needs >= 2 clean rows per batch, got {n}")
        xc, xa = x[:n], x[n:]
        yc = self.clean(xc)
        ca = self._clean_with(xa, xc)
        ya = self.adv(xa)
        return torch.cat([yc, ca + w[n:] * (ya - ca)])


def _swap_batchnorms(module: nn.Module, momentum: float) -> int:
    """Replace every BatchNorm under ``module`` by a :class:`DualBatchNorm`; return how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm1d | nn.BatchNorm2d):
            setattr(module, name, DualBatchNorm(child, momentum))
            count += 1
        else:
            count += _swap_batchnorms(child, momentum)
    return count


class AFABackbone(Backbone):
    """A backbone whose BatchNorms are :class:`DualBatchNorm` s.

    ``forward(x)`` lets every layer estimate its fusing weight; training passes the
    weights (``fuse``) and the clean/adversarial split of the batch (``clean_rows``).
    After each call ``estimates`` holds the layers' fusing-weight estimates (layers x N;
    None when the weights were given).
    """

    def __init__(self, base: Backbone, momentum: float = 0.05) -> None:
        super().__init__(base.input_size, base.input_channels, base.embedding_dim)
        if _swap_batchnorms(base, momentum) == 0:
            raise ValueError(f"backbone {base.spec.get('name')!r} has no BatchNorm for AFA")
        self.base = base
        self.duals = [m for m in base.modules() if isinstance(m, DualBatchNorm)]
        self.estimates: torch.Tensor | None = None

    def forward(
        self, x: torch.Tensor, fuse: torch.Tensor | None = None, clean_rows: int | None = None
    ) -> torch.Tensor:
        return self._run(x, fuse, clean_rows, None)

    def _run(self, x, fuse, clean_rows, fit_target) -> torch.Tensor:
        trail: list[torch.Tensor] = []  # each layer appends its estimate, in forward order
        for m in self.duals:
            m.fuse, m.clean_rows, m.trail, m.fit_target = fuse, clean_rows, trail, fit_target
        try:
            out = self.base(x)
        finally:
            for m in self.duals:
                m.fuse, m.clean_rows, m.trail, m.fit_target = None, None, [], None
        self.estimates = torch.stack(trail) if trail else None  # None: weights were given
        return out

    @torch.no_grad()
    def fit_estimators(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Update every layer's estimator toward ``target`` (N) on the test-time path.

        Evaluation mode, estimated mixing: each layer sees the features its predecessors
        produce when *they* mix by their own estimates, as at test time. Fitted on the
        training forward instead (mixing by the given weights), a layer learns to read
        which branch its predecessors took, a shortcut that vanishes at test time: every
        input then gets the training batches' mean weight. Returns the estimates (layers x N)
        made before this update.
        """
        was = self.training
        self.eval()
        try:
            self._run(x, None, None, target)
        finally:
            self.train(was)
        return self.estimates

    @torch.no_grad()
    def fusing_weight(self, x: torch.Tensor) -> torch.Tensor:
        """Mean estimated fusing weight per sample (evaluation mode, estimated mixing)."""
        was = self.training
        self.eval()
        try:
            self(x)
        finally:
            self.train(was)
        return self.estimates.mean(0)


def afa_backbone(base: Backbone, momentum: float = 0.05) -> AFABackbone:
    """Wrap ``base`` (built by ``create_backbone``) and record the spec that rebuilds it."""
    model = AFABackbone(base, momentum)
    size_keys = ("name", "input_size", "input_channels", "embedding_dim")
    model.spec = {
        "name": "afa",
        "input_size": list(base.input_size),
        "input_channels": base.input_channels,
        "embedding_dim": base.embedding_dim,
        "base": {"name": base.spec["name"]}
        | {k: v for k, v in base.spec.items() if k not in size_keys},
        "momentum": momentum,
    }
    return model
