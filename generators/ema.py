"""Exponential moving average of the denoiser weights (the weights that are sampled from).

Kept as a plain name -> fp32 tensor dict so that it saves to safetensors as is and
restores exactly on resume. The decay warms up as (1 + step) / (10 + step), capped at
``decay``, so early averages are not dominated by the random initialisation (diffusers'
``EMAModel`` with ``use_ema_warmup`` off uses the same rule).

The shadow lives on the device of the weights it follows: the training loop creates it
after ``accelerator.prepare`` has placed the model, and :meth:`update` moves it along if
the model was moved afterwards (an EMA built on the CPU and updated from a GPU model
would otherwise mix devices on its first step). It stays float32 whatever the model's
dtype, so averaging a bf16 model does not round the average to bf16 every step.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {
            k: v.detach().to(dtype=torch.float32, copy=True)
            for k, v in model.state_dict().items()
            if v.dtype.is_floating_point
        }

    @property
    def device(self) -> torch.device:
        return next(iter(self.shadow.values())).device if self.shadow else torch.device("cpu")

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def rate(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if not self.shadow:
            return
        d = self.rate(step)
        state = model.state_dict()
        keys = list(self.shadow)
        first = state[keys[0]]
        if first.device != self.device:
            self.to(first.device)
        shadows = [self.shadow[k] for k in keys]
        values = [state[k].detach().float() for k in keys]
        torch._foreach_mul_(shadows, d)
        torch._foreach_add_(shadows, values, alpha=1 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        state = model.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v.to(device=state[k].device, dtype=state[k].dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise KeyError("EMA state does not match the model")
        for k, v in state.items():
            self.shadow[k].copy_(v)
