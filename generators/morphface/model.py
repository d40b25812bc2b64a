"""MorphFace's denoiser: identity and style contexts through cross-attention, blended by t.

* **Identity context**: the recognizer embedding through the same projection MLP as the
  other generators, ``conditioning.identity_tokens`` tokens.
* **Style context**: the packed normal/albedo/shading maps through :class:`StyleEncoder`
  (stride-2 convolutions, then a linear layer per cell of a ``style_grid`` x
  ``style_grid`` feature map, plus a learned position per cell), one token per cell, so
  where a face points and where its light falls stay spatially explicit.
* **Context blending** (the exact published rule is not public; this is the project's):
  each cross-attention layer attends to the identity tokens and to the style tokens
  *separately* (two softmaxes over the same query, key and value projections) and adds
  the two results weighted by

      w_id(t) = 1 - beta t/T,      w_style(t) = 1 - beta (1 - t/T)      (beta = blend_strength)

  Separate softmaxes keep 16 style tokens from drowning 4 identity tokens (in one joint
  softmax a context's share of attention grows with its token count); the timestep
  weights follow the coarse-to-fine order of denoising: at high noise the sample's
  layout (pose, head shape, light direction) is being decided, which is what the style
  maps say; at low noise the fine detail that carries identity is, which is what the
  identity embedding says. Neither weight drops below 1 - beta, so both contexts act at
  every step. ``blending: constant`` keeps the separate softmaxes with both weights 1;
  ``blending: none`` (the ablation) is one joint cross-attention over all tokens, the
  conditioning of the other generators.
* A learned null sequence of the same layout is the empty context (classifier-free
  guidance, and the "unlabelled synthetic faces" new identities are drawn from).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synthface.generators.config import GeneratorConfig
from synthface.generators.denoiser import ConditionalDenoiser, _mlp
from synthface.generators.morphface.styles import MAP_CHANNELS
from synthface.pipeline.errors import InputError


class StyleEncoder(nn.Module):
    """(N, 9, S, S) maps -> (N, grid^2, width) style tokens."""

    def __init__(self, channels: list[int], grid: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(MAP_CHANNELS, channels[0], 3, padding=1), nn.SiLU()]
        prev = channels[0]
        for ch in channels:
            layers += [
                nn.Conv2d(prev, ch, 3, stride=2, padding=1),
                nn.GroupNorm(min(8, ch), ch),
                nn.SiLU(),
            ]
            prev = ch
        self.convs = nn.Sequential(*layers)
        self.grid = grid
        self.proj = nn.Linear(prev, width)
        self.position = nn.Parameter(torch.randn(grid * grid, width) * 0.02)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(self.convs(maps), self.grid)  # (N, C, grid, grid)
        return self.proj(h.flatten(2).transpose(1, 2)) + self.position


class MorphFaceConditioner(nn.Module):
    """(identity embedding, style maps) -> [identity tokens | style tokens], with a null."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        c, m = cfg.conditioning, cfg.morphface
        width = cfg.unet.cross_attention_dim
        self.identity_dim = c.identity_dim
        self.identity_tokens = c.identity_tokens
        self.style_tokens = m.style_grid * m.style_grid
        self.map_size = m.map_size
        self.width = width
        self.identity_mlp = _mlp([c.identity_dim, *c.mlp_hidden, width * c.identity_tokens])
        self.style = StyleEncoder(m.style_channels, m.style_grid, width)
        self.num_tokens = self.identity_tokens + self.style_tokens
        self.null_tokens = nn.Parameter(torch.randn(self.num_tokens, width) * 0.02)

    def check(self, identity: torch.Tensor, maps: torch.Tensor | None) -> None:
        """Raise :class:`InputError` for conditions this model cannot use."""
        if identity.ndim != 2 or identity.shape[1] != self.identity_dim:
            raise InputError(
                f"identity conditions must have shape (N, {self.identity_dim}) "
                f"(got {tuple(identity.shape)})"
            )
        if not torch.isfinite(identity).all():
            raise InputError("identity conditions contain NaN or infinite values")
        want = (identity.shape[0], MAP_CHANNELS, self.map_size, self.map_size)
        if maps is None or tuple(maps.shape) != want:
            got = None if maps is None else tuple(maps.shape)
            raise InputError(f"style maps must have shape {want} (got {got})")
        if not torch.isfinite(maps).all():
            raise InputError("style maps contain NaN or infinite values")

    def forward(
        self, identity: torch.Tensor, maps: torch.Tensor, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        n = identity.shape[0]
        identity = F.normalize(identity.float(), dim=1)
        ident = self.identity_mlp(identity).view(n, self.identity_tokens, self.width)
        style = self.style(maps.to(ident.dtype))
        tokens = torch.cat([ident, style], dim=1)
        if drop is not None:
            null = self.null(n).to(tokens.dtype)
            tokens = torch.where(drop.view(n, 1, 1), null, tokens)
        return tokens

    def null(self, n: int) -> torch.Tensor:
        return self.null_tokens.unsqueeze(0).expand(n, -1, -1)


def blend_weights(t: torch.Tensor, num_train_timesteps: int, mode: str, beta: float):
    """(N,) timesteps -> (N, 2) weights of the identity and style attention outputs."""
    s = (t.float() / num_train_timesteps).clamp(0, 1).reshape(-1)
    if mode == "constant":
        return torch.ones(s.shape[0], 2, device=t.device)
    return torch.stack([1 - beta * s, 1 - beta * (1 - s)], dim=1)


class BlendedAttnProcessor:
    """diffusers attention processor: cross-attention split into two weighted contexts.

    Self-attention (no ``encoder_hidden_states``) and calls without ``blend`` run the
    default processor. The split path supports the attention layout of diffusers'
    ``BasicTransformerBlock`` cross-attention (3-D input, no group/spatial/cross norm,
    no residual inside the layer), which is what ``UNet2DConditionModel`` builds; other
    layouts are refused rather than computed wrongly.
    """

    def __init__(self, identity_tokens: int) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.identity_tokens = identity_tokens
        self.default = AttnProcessor2_0()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        blend: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or blend is None:
            return self.default(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if (
            hidden_states.ndim != 3
            or attention_mask is not None
            or attn.spatial_norm is not None
            or attn.group_norm is not None
            or attn.norm_cross
            or attn.residual_connection
        ):
            raise NotImplementedError("blended cross-attention: unsupported attention layout")
        b = hidden_states.shape[0]
        heads = attn.heads
        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // heads
        query = query.view(b, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)

        def attend(context: torch.Tensor) -> torch.Tensor:
            key = attn.to_k(context).view(b, -1, heads, head_dim).transpose(1, 2)
            value = attn.to_v(context).view(b, -1, heads, head_dim).transpose(1, 2)
            if attn.norm_k is not None:
                key = attn.norm_k(key)
            return F.scaled_dot_product_attention(query, key, value)

        k = self.identity_tokens
        w = blend.to(query.dtype).view(b, 2, 1, 1, 1)
        out = w[:, 0] * attend(encoder_hidden_states[:, :k]) + w[:, 1] * attend(
            encoder_hidden_states[:, k:]
        )
        out = out.transpose(1, 2).reshape(b, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


class MorphFaceDenoiser(ConditionalDenoiser):
    """eps_theta(x_t, t, [identity | style] tokens), with context blending inside.

    The core denoiser with MorphFace's conditioner; ``attributes`` of ``forward`` are the
    style maps. Blending needs t inside every cross-attention layer, so the weights travel
    as a ``cross_attention_kwargs`` argument of the UNet call.
    """

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__(cfg, cond=MorphFaceConditioner(cfg))
        self.blending = cfg.morphface.blending
        self.blend_strength = cfg.morphface.blend_strength
        self.num_train_timesteps = cfg.diffusion.num_train_timesteps
        if self.blending != "none":
            self.unet.set_attn_processor(BlendedAttnProcessor(self.cond.identity_tokens))

    def unet_kwargs(self, sample: torch.Tensor, t: torch.Tensor) -> dict:
        if self.blending == "none":
            return {}
        rows = t.reshape(-1).expand(sample.shape[0]) if t.numel() == 1 else t
        w = blend_weights(rows, self.num_train_timesteps, self.blending, self.blend_strength)
        return {"cross_attention_kwargs": {"blend": w.to(sample.device)}}
