"""UIFace's denoiser as a diffusers model: ``UIFaceUNet`` (``ModelMixin`` + ``ConfigMixin``).

Written from the description of UIFace's ``ConditionalUNet`` (a labml-style UNet from
IDiff-Face), which diffusers' ``UNet2DConditionModel`` cannot express faithfully:

* channel multipliers are *relative* (level i has ``base * prod(mult[:i+1])`` channels:
  96 x [1, 2, 2, 2] gives 96, 192, 384, 768), each up level has ``num_res_blocks + 1``
  residual blocks whose last one reduces the width, and resampling is a strided 3x3
  convolution down and a 4x4 transposed convolution up;
* residual blocks see only the timestep, through *separate* scale and shift projections
  of one time embedding (AdaGN: ``(1 + scale) * GN(h) + shift``);
* the identity context (one 256-d vector per sample) enters only through cross-attention,
  and every attention block projects it into its own tokens: ``Linear(256 -> 256 * k)``
  read as ``k`` tokens of width 256 (channel-major, then GroupNorm over the 256 channels);
* attention blocks are ``proj_in`` 1x1 -> self-attention -> cross-attention -> MLP (one
  shared GroupNorm before each) -> ``proj_out`` 1x1, with residuals around each part.

The attention layers are diffusers ``Attention`` modules (``attn1`` self, ``attn2`` cross),
so ``attn_processors`` / ``set_attn_processor`` work as on any diffusers UNet: two-stage
sampling and attention injection are processors (``synthface.generators.uiface.processors``),
not a fork of the network. ``save_pretrained`` / ``from_pretrained`` come from
``ModelMixin``. The released checkpoint's tensor names map onto this module tree one to
one (``synthface.generators.uiface.convert``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def level_channels(base: int, mult: list[int] | tuple[int, ...]) -> list[int]:
    """Width of each resolution level: multipliers are relative to the previous level."""
    out, ch = [], base
    for m in mult:
        ch *= m
        out.append(ch)
    return out


class TimeResBlock(nn.Module):
    """Residual block conditioned on the timestep only (separate scale and shift)."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_proj = nn.Linear(temb, cout)
        self.scale_proj = nn.Linear(cout, cout)
        self.shift_proj = nn.Linear(cout, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        emb = self.time_proj(F.silu(temb))
        scale = self.scale_proj(emb)[:, :, None, None]
        shift = self.shift_proj(emb)[:, :, None, None]
        h = (1 + scale) * self.norm2(h) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return h + skip


class ContextAttentionBlock(nn.Module):
    """Self-attention, then cross-attention to this block's own context tokens, then an MLP."""

    def __init__(
        self, channels: int, context_dim: int, tokens: int, head_channels: int, groups: int
    ) -> None:
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"{channels} channels are not divisible by {head_channels} per head")
        heads = channels // head_channels
        self.context_dim = context_dim
        self.tokens = tokens
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.norm = nn.GroupNorm(groups, channels)
        self.context_proj = nn.Linear(context_dim, context_dim * tokens)
        self.context_norm = nn.GroupNorm(groups, context_dim)
        common = dict(heads=heads, dim_head=head_channels, bias=True, out_bias=True)
        self.attn1 = Attention(channels, **common)
        self.attn2 = Attention(channels, cross_attention_dim=context_dim, **common)
        self.ff = nn.Sequential(
            nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels)
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def context_tokens(self, context: torch.Tensor) -> torch.Tensor:
        """(B, context_dim) -> (B, tokens, context_dim)."""
        c = self.context_proj(context).view(-1, self.context_dim, self.tokens)
        return self.context_norm(c).transpose(1, 2)

    def _normed(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, C)
        return self.norm(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.context_tokens(context)
        y = self.proj_in(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        y = self.attn1(self._normed(y)) + y
        y = self.attn2(self._normed(y), encoder_hidden_states=tokens) + y
        y = self.ff(self._normed(y)) + y
        y = y.transpose(1, 2).reshape(b, c, h, w)
        return self.proj_out(y) + x


class Level(nn.Module):
    """One resolution level: residual blocks, optional attention after each, a resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList()
        self.downsampler: nn.Module | None = None
        self.upsampler: nn.Module | None = None


class UIFaceUNet(ModelMixin, ConfigMixin, AttentionMixin):
    """eps(x_t, t, context): UIFace's conditional UNet (context = projected identity)."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 96,
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),
        attention_levels: tuple[bool, ...] = (False, True, True, True),
        num_res_blocks: int = 2,
        head_channels: int = 32,
        identity_dim: int = 512,
        context_dim: int = 256,
        context_tokens: int = 32,
        norm_num_groups: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(attention_levels) != len(channel_mult):
            raise ValueError("attention_levels needs one flag per channel_mult entry")
        chans = level_channels(base_channels, channel_mult)
        temb = 4 * base_channels
        g = norm_num_groups
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        # cos-first sinusoid of base_channels frequencies, then Linear-SiLU-Linear.
        self.time_proj = Timesteps(base_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(base_channels, temb)
        self.context_proj = nn.Linear(identity_dim, context_dim)
        # Stands for "no identity"; trained by the dropped samples (classifier-free guidance).
        self.empty_context = nn.Parameter(torch.randn(context_dim))

        def attn(ch: int) -> ContextAttentionBlock:
            return ContextAttentionBlock(ch, context_dim, context_tokens, head_channels, g)

        self.down_blocks = nn.ModuleList()
        cin = base_channels
        for i, ch in enumerate(chans):
            level = Level()
            for _ in range(num_res_blocks):
                level.resnets.append(TimeResBlock(cin, ch, temb, g, dropout))
                if attention_levels[i]:
                    level.attentions.append(attn(ch))
                cin = ch
            level.downsampler = (
                nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i < len(chans) - 1 else None
            )
            self.down_blocks.append(level)
        self.mid_block = Level()
        self.mid_block.resnets.append(TimeResBlock(cin, cin, temb, g, dropout))
        self.mid_block.attentions.append(attn(cin))
        self.mid_block.resnets.append(TimeResBlock(cin, cin, temb, g, dropout))
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(chans))):
            ch = chans[i]
            below = chans[i - 1] if i > 0 else base_channels
            level = Level()
            for _ in range(num_res_blocks):
                level.resnets.append(TimeResBlock(2 * ch, ch, temb, g, dropout))
                if attention_levels[i]:
                    level.attentions.append(attn(ch))
            level.resnets.append(TimeResBlock(ch + below, below, temb, g, dropout))
            if attention_levels[i]:
                level.attentions.append(attn(below))
            level.upsampler = nn.ConvTranspose2d(below, below, 4, 2, 1) if i > 0 else None
            self.up_blocks.append(level)
        self.conv_norm_out = nn.GroupNorm(g, base_channels)
        self.conv_out = nn.Conv2d(base_channels, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.channel_mult) - 1)

    def embed_identity(self, identity: torch.Tensor) -> torch.Tensor:
        """(B, identity_dim) unit embeddings -> (B, context_dim) context."""
        return self.context_proj(identity)

    def empty(self, n: int) -> torch.Tensor:
        return self.empty_context.unsqueeze(0).expand(n, -1)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """Predicted noise for ``sample`` (B,C,H,W) at ``timestep`` (B,) given ``context``."""
        t = timestep
        if t.ndim == 0:
            t = t.expand(sample.shape[0])
        temb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        context = context.to(sample.dtype)
        x = self.conv_in(sample)
        skips = [x]
        for level in self.down_blocks:
            for j, res in enumerate(level.resnets):
                x = res(x, temb)
                if len(level.attentions):
                    x = level.attentions[j](x, context)
                skips.append(x)
            if level.downsampler is not None:
                x = level.downsampler(x)
                skips.append(x)
        x = self.mid_block.resnets[0](x, temb)
        x = self.mid_block.attentions[0](x, context)
        x = self.mid_block.resnets[1](x, temb)
        for level in self.up_blocks:
            for j, res in enumerate(level.resnets):
                x = res(torch.cat([x, skips.pop()], dim=1), temb)
                if len(level.attentions):
                    x = level.attentions[j](x, context)
            if level.upsampler is not None:
                x = level.upsampler(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))
