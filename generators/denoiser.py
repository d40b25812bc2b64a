"""Conditional denoiser: diffusers ``UNet2DConditionModel`` fed identity and attribute tokens.

Conditions enter only through cross-attention (as in UIFace and, by the width of its
projection, most likely ID³): the identity embedding goes through the ID³ projection
MLP into ``identity_tokens`` tokens, the attribute vector into one more token. A learned
null sequence of the same shape stands for "no condition", which is what classifier-free
guidance contrasts against; it is a parameter, so it is trained by the dropped samples.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from synthface.generators.config import GeneratorConfig
from synthface.pipeline.errors import InputError


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def check_conditions(
    identity: torch.Tensor, attributes: torch.Tensor | None, identity_dim: int, num_attributes: int
) -> None:
    """Raise :class:`InputError` for conditions of the wrong shape or with NaN/inf."""
    if identity.ndim != 2 or identity.shape[1] != identity_dim:
        raise InputError(
            f"identity conditions must have shape (N, {identity_dim}) (got {tuple(identity.shape)})"
        )
    if not torch.isfinite(identity).all():
        raise InputError("identity conditions contain NaN or infinite values")
    if num_attributes:
        if attributes is None:
            raise InputError(f"attribute conditions (N, {num_attributes}) are required")
        if attributes.shape != (identity.shape[0], num_attributes):
            raise InputError(
                f"attribute conditions must have shape ({identity.shape[0]}, "
                f"{num_attributes}) (got {tuple(attributes.shape)})"
            )
        if not torch.isfinite(attributes).all():
            raise InputError("attribute conditions contain NaN or infinite values")


class ConditionEncoder(nn.Module):
    """(identity embedding, attributes) -> cross-attention tokens, with a learned null."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        c = cfg.conditioning
        width = cfg.unet.cross_attention_dim
        self.identity_dim = c.identity_dim
        self.num_attributes = len(c.attributes)
        self.identity_tokens = c.identity_tokens
        self.width = width
        self.identity_mlp = _mlp([c.identity_dim, *c.mlp_hidden, width * c.identity_tokens])
        self.attribute_mlp = (
            _mlp([self.num_attributes, width, width]) if self.num_attributes else None
        )
        self.num_tokens = c.identity_tokens + (1 if self.num_attributes else 0)
        self.null_tokens = nn.Parameter(torch.randn(self.num_tokens, width) * 0.02)

    def check(self, identity: torch.Tensor, attributes: torch.Tensor | None) -> None:
        """Raise :class:`InputError` for conditions this model cannot use."""
        check_conditions(identity, attributes, self.identity_dim, self.num_attributes)

    def forward(
        self,
        identity: torch.Tensor,
        attributes: torch.Tensor | None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens (N, num_tokens, width); rows with ``drop`` True get the null tokens."""
        n = identity.shape[0]
        identity = nn.functional.normalize(identity.float(), dim=1)
        tokens = self.identity_mlp(identity).view(n, self.identity_tokens, self.width)
        if self.attribute_mlp is not None:
            attr = self.attribute_mlp(attributes.float()).unsqueeze(1)
            tokens = torch.cat([tokens, attr], dim=1)
        if drop is not None:
            null = self.null_tokens.unsqueeze(0).expand(n, -1, -1).to(tokens.dtype)
            tokens = torch.where(drop.view(n, 1, 1), null, tokens)
        return tokens

    def null(self, n: int) -> torch.Tensor:
        return self.null_tokens.unsqueeze(0).expand(n, -1, -1)


def build_unet(cfg: GeneratorConfig) -> nn.Module:
    from diffusers import UNet2DConditionModel

    u = cfg.unet
    levels = u.cross_attention_levels
    if levels is None:  # attention everywhere except the highest resolution
        levels = [i > 0 for i in range(len(u.block_out_channels))] or [True]
        if len(levels) == 1:
            levels = [True]
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels))
    ch = cfg.sample_channels
    return UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=ch,
        out_channels=ch,
        block_out_channels=tuple(u.block_out_channels),
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=u.layers_per_block,
        norm_num_groups=u.norm_num_groups,
        cross_attention_dim=u.cross_attention_dim,
        attention_head_dim=u.attention_head_dim,
        transformer_layers_per_block=u.transformer_layers_per_block,
    )


class ConditionalDenoiser(nn.Module):
    """eps_theta(x_t, t, tokens); ``cond`` turns raw conditions into tokens.

    A generator with other conditions passes its own ``cond`` (same ``check``/``forward``/
    ``null`` interface) and may add UNet call arguments through ``unet_kwargs``.
    """

    def __init__(self, cfg: GeneratorConfig, cond: nn.Module | None = None) -> None:
        super().__init__()
        self.unet = build_unet(cfg)
        self.cond = cond if cond is not None else ConditionEncoder(cfg)

    def unet_kwargs(self, sample: torch.Tensor, t: torch.Tensor) -> dict:
        """Extra keyword arguments of the UNet call (none here)."""
        return {}

    def forward(
        self,
        sample: torch.Tensor,
        t: torch.Tensor,
        tokens: torch.Tensor | None = None,
        *,
        identity: torch.Tensor | None = None,
        attributes: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted noise; pass ``tokens`` or the raw conditions (one call, DDP-safe)."""
        if tokens is None:
            tokens = self.cond(identity, attributes, drop)
        states = tokens.to(sample.dtype)
        return self.unet(
            sample, t, encoder_hidden_states=states, **self.unet_kwargs(sample, t)
        ).sample
