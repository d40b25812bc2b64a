"""UIFace's denoiser on the generator core: identity -> context -> ``UIFaceUNet``.

The identity embedding (L2-normalised) is projected to one context vector; each attention
block of the UNet turns it into its own cross-attention tokens, so the context enters only
through cross-attention. Training (UIFace's recipe, from IDiff-Face):

* element-wise dropout on the projected context, probability ``uiface.context_dropout``
  (0.25; inverted dropout, so kept entries are scaled by 1 / (1 - p) as ``nn.Dropout``
  does — at sampling time nothing is dropped or scaled);
* then whole samples replaced by the learnable empty context with probability
  ``conditioning.p_uncond`` (0.2); the empty context is a parameter of the UNet and is
  trained by those samples;
* plain epsilon loss, no identity term.

Both masks are drawn by the training loop's per-step generator (``training_extras`` and
``drop``), so a resumed run repeats them exactly. Unlike the reference, the first sample
of every batch is not forced to be unconditioned.
"""

from __future__ import annotations

import torch
from torch import nn

from synthface.generators.config import GeneratorConfig
from synthface.generators.denoiser import check_conditions
from synthface.generators.uiface.unet import UIFaceUNet
from synthface.pipeline.errors import ConfigError


def build_uiface_unet(cfg: GeneratorConfig) -> UIFaceUNet:
    u = cfg.uiface.unet
    return UIFaceUNet(
        in_channels=cfg.sample_channels,
        base_channels=u.base_channels,
        channel_mult=tuple(u.channel_mult),
        attention_levels=tuple(u.attention_levels),
        num_res_blocks=u.num_res_blocks,
        head_channels=u.head_channels,
        identity_dim=cfg.conditioning.identity_dim,
        context_dim=u.context_dim,
        context_tokens=u.context_tokens,
        norm_num_groups=u.norm_num_groups,
    )


class UIFaceCondition:
    """The ``cond`` interface of the core (check, identity -> context, null context)."""

    def __init__(self, denoiser: UIFaceDenoiser) -> None:
        self.denoiser = denoiser

    def check(self, identity: torch.Tensor, attributes: torch.Tensor | None) -> None:
        check_conditions(identity, None, self.denoiser.identity_dim, 0)

    def __call__(self, identity: torch.Tensor, attributes: torch.Tensor | None = None):
        return self.denoiser.context(identity)

    def null(self, n: int) -> torch.Tensor:
        return self.denoiser.unet.empty(n)


class UIFaceDenoiser(nn.Module):
    """eps_theta(x_t, t, context); ``cond`` maps identities to contexts."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        if cfg.conditioning.attributes:
            names = [a.name for a in cfg.conditioning.attributes]
            raise ConfigError(
                f"conditioning.attributes: UIFace conditions on the identity only "
                f"(got {names}); set conditioning.attributes: []"
            )
        self.unet = build_uiface_unet(cfg)
        self.identity_dim = cfg.conditioning.identity_dim
        self.context_dropout = cfg.uiface.context_dropout

    @property
    def cond(self) -> UIFaceCondition:
        return UIFaceCondition(self)

    def context(
        self,
        identity: torch.Tensor,
        drop: torch.Tensor | None = None,
        context_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, identity_dim) -> (N, context_dim); training masks as in the module docstring."""
        identity = nn.functional.normalize(identity.float(), dim=1)
        c = self.unet.embed_identity(identity)
        if context_keep is not None:
            c = c * context_keep.to(c.dtype) / (1.0 - self.context_dropout)
        if drop is not None:
            empty = self.unet.empty(c.shape[0]).to(c.dtype)
            c = torch.where(drop.view(-1, 1), empty, c)
        return c

    def training_extras(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-step random inputs besides the core's (element-wise context dropout mask)."""
        if self.context_dropout <= 0:
            return {}
        dim = self.unet.config.context_dim
        keep = torch.rand((n, dim), generator=gen) >= self.context_dropout
        return {"context_keep": keep.to(self.unet.empty_context.device)}

    def forward(
        self,
        sample: torch.Tensor,
        t: torch.Tensor,
        tokens: torch.Tensor | None = None,
        *,
        identity: torch.Tensor | None = None,
        attributes: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
        context_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted noise; pass a context (``tokens``) or the raw identity (one call, DDP-safe)."""
        if tokens is None:
            tokens = self.context(identity, drop, context_keep)
        return self.unet(sample, t, tokens)
