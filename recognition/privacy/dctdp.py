"""DCTDP (ECCV 2022): learnable privacy budgets on the block-DCT, Laplace noise.

The DC coefficient of every block is dropped (63 x 3 = 189 channels); then, element-wise
over the ``N = 189 x S' x S'`` values of one image:

- total budget ``B = budget_mean * N``;
- budgets ``eps_i = B * softmax(rho)_i`` (``rho`` learnable, initialised to 0, so every
  ``eps_i = budget_mean`` at the start);
- scale ``b_i = sensitivity / eps_i``;
- ``x~_i = x_i + mu_i + b_i * Laplace(0, 1)`` (``mu`` a learnable location, initialised to 0).

``budget_mean`` is the privacy knob (smaller = more noise); the sensitivity is a property
of the data, kept at 1 as in the reference. The noise parameters train jointly with the
recognizer; the reference gives them their own Adam optimiser, here they are a parameter
group of the trainer's optimiser with the learning-rate factor ``noise_lr_scale``. The
reference's unused ``aux_loss`` is not reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from synthface.recognition.privacy import bdct
from synthface.recognition.privacy._base import (
    PROTECTIONS,
    InputNorm,
    ProtectedRecognizer,
    bdct_size,
    build_server,
)

KEPT_CHANNELS = tuple(bdct.complement(bdct.all_colours([0])))  # 189


def laplace(shape, *, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard Laplace samples by inverse CDF (torch.distributions takes no generator)."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype) - 0.5
    return -torch.sign(u) * torch.log1p(-2.0 * u.abs().clamp(max=0.5 - 1e-7))


@PROTECTIONS.register("dctdp")
class DCTDP(ProtectedRecognizer):
    """Server network on the 189 noisy AC channels.

    Args:
        budget_mean: mean privacy budget per element (reference 4.0).
        sensitivity: Delta of the Laplace mechanism (reference 1.0).
        noise_lr_scale: learning-rate factor of ``rho`` and ``mu``.
        backbone, backbone_params, upsample: as for every protection.
    """

    def __init__(
        self,
        *,
        backbone: str = "ir50",
        backbone_params: dict[str, Any] | None = None,
        input_size: int | Sequence[int] = 112,
        embedding_dim: int = 512,
        budget_mean: float = 4.0,
        sensitivity: float = 1.0,
        noise_lr_scale: float = 1.0,
        upsample: int = 8,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(input_size=input_size, embedding_dim=embedding_dim, eval_seed=eval_seed)
        if not budget_mean > 0:
            raise ValueError(f"budget_mean must be > 0, got {budget_mean!r}")
        if not sensitivity > 0:
            raise ValueError(f"sensitivity must be > 0, got {sensitivity!r}")
        if not noise_lr_scale > 0:
            raise ValueError(f"noise_lr_scale must be > 0, got {noise_lr_scale!r}")
        self.upsample = upsample
        self.budget_mean, self.sensitivity = float(budget_mean), float(sensitivity)
        self.noise_lr_scale = float(noise_lr_scale)
        side = bdct_size(self.size, upsample)
        shape = (len(KEPT_CHANNELS), side, side)
        self.register_buffer("channels", torch.tensor(KEPT_CHANNELS), persistent=False)
        self.rho = nn.Parameter(torch.zeros(shape))
        self.mu = nn.Parameter(torch.zeros(shape))
        self.norm = InputNorm(len(KEPT_CHANNELS))
        self.server = build_server(
            backbone,
            dict(backbone_params or {}),
            channels=len(KEPT_CHANNELS),
            size=side,
            embedding_dim=embedding_dim,
        )

    def budgets(self) -> torch.Tensor:
        """Per-element budgets ``eps`` (189 x S' x S'), summing to ``budget_mean * N``."""
        n = self.rho.numel()
        return (self.budget_mean * n) * torch.softmax(self.rho.flatten(), 0).view_as(self.rho)

    def noise_scale(self) -> torch.Tensor:
        """Laplace scale ``b = sensitivity / eps`` per element."""
        return self.sensitivity / self.budgets()

    def lr_scales(self) -> dict[str, float]:
        return {"rho": self.noise_lr_scale, "mu": self.noise_lr_scale}

    def no_weight_decay(self) -> set[str]:
        """The budget logits and the noise location are not weights: decaying them would
        pull the budgets toward uniform and the location toward 0 by themselves."""
        return {"rho", "mu"}

    def server_view(self, x, generator=None):
        if generator is None:
            generator = self.generator(x.device)
        ac = bdct.to_bdct(x, self.upsample)[:, self.channels]
        noise = laplace(ac.shape, generator=generator, device=ac.device, dtype=ac.dtype)
        return ac + self.mu + self.noise_scale() * noise

    def visual(self, x, generator=None):
        full = bdct.scatter_channels(self.server_view(x, generator), KEPT_CHANNELS)
        return bdct.from_bdct(full)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.server(self.norm(self.server_view(x)))
