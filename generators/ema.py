"""Exponential moving average of the denoiser weights (the weights that are sampled from).

Kept as a plain name -> fp32 tensor dict so that it saves to safetensors as is and
restores exactly on resume. The decay warms up as (1 + step) / (10 + step), capped at
``decay``, so early averages are not dominated by the random initialisation.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {
            k: v.detach().float().clone()
            for k, v in model.state_dict().items()
            if v.dtype.is_floating_point
        }

    def rate(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.rate(step)
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        state = model.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v.to(state[k].dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise KeyError("EMA state does not match the model")
        for k, v in state.items():
            self.shadow[k].copy_(v)
