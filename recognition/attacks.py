"""PGD on a face recognizer's embedding: adversarial examples for training and evaluation.

A recognizer is attacked through what it outputs, the embedding: the perturbed image's
cosine to a target embedding is pushed down (a genuine pair made to look like two
people, or an image made unlike its clean self) or pulled up (an impostor made to look
like the target). This needs neither the margin head nor labels, so the same attack
serves adversarial training and robust verification.

Inputs are model inputs in [-1, 1] (``(x / 255 - 0.5) / 0.5``); budgets are given in
0..255 pixel units and converted here (1 pixel unit = 2/255).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

PIXEL = 2.0 / 255.0  # one 8-bit grey level in model-input units


def pgd_attack(
    embed: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    targets: torch.Tensor,
    epsilon: torch.Tensor | float,
    *,
    steps: int,
    step_size: torch.Tensor | float | None = None,
    pull: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L-inf PGD with a random start (Madry et al.) against ``cos(embed(x'), target)``.

    Args:
        embed: image batch -> N x D embeddings (gradients flow to the input).
        x: clean inputs, N x C x H x W in [-1, 1].
        targets: N x D embeddings to move away from (or towards, where ``pull``).
        epsilon: budget per sample (N) or for all, in pixel units (0..255).
        steps: gradient steps.
        step_size: pixel units; default ``2.5 * epsilon / steps``.
        pull: N booleans; True pulls that sample towards its target instead.
        generator: for the random start.

    Returns:
        The adversarial inputs (detached), within ``epsilon`` of ``x`` and in [-1, 1].
    """
    n = x.shape[0]
    shape = (n,) + (1,) * (x.dim() - 1)
    eps = torch.as_tensor(epsilon, dtype=x.dtype, device=x.device).expand(n).reshape(shape)
    eps = eps * PIXEL
    alpha = (
        2.5 * eps / steps
        if step_size is None
        else (
            torch.as_tensor(step_size, dtype=x.dtype, device=x.device).expand(n).reshape(shape)
            * PIXEL
        )
    )
    sign = torch.ones(n, device=x.device, dtype=x.dtype)
    if pull is not None:
        sign = torch.where(pull.to(x.device).bool(), -sign, sign)  # ascend on -cos for pulls
    target = F.normalize(targets.detach().float(), dim=1)
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    delta = ((noise * 2 - 1) * eps).detach()
    delta = ((x + delta).clamp(-1, 1) - x).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():  # also under an evaluation's no_grad
            emb = F.normalize(embed(x + delta).float(), dim=1)
            # ascend on -sign * cos: push (sign +1) lowers the cosine, pull raises it
            loss = -(sign * (emb * target).sum(1)).sum()
            (grad,) = torch.autograd.grad(loss, delta)
        delta = delta.detach() + alpha * grad.sign()
        delta = torch.maximum(torch.minimum(delta, eps), -eps)
        delta = ((x + delta).clamp(-1, 1) - x).detach()
    return (x + delta).detach()
