"""Attention processors for UIFace's two-stage sampling (diffusers processor protocol).

One UNet call carries both passes of a step as one batch. ``InjectionPlan`` says, per row
of that batch, which row's queries and keys its self-attention uses (attention injection:
the identity pass attends with the empty-context pass's attention map but its own values),
which row's cross-attention logit statistics it is re-standardised toward, and which rows'
cross-attention maps are reduced for the adaptive switch. With an empty plan the
processor computes exactly what diffusers' ``AttnProcessor2_0`` does.

Injecting a self-attention *map* is done without materialising it: softmax(q_u k_u^T) v_c
is scaled-dot-product attention with the source row's q and k and the row's own v, so the
fused SDPA kernels (flash / memory-efficient on a GPU) still run.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class InjectionPlan:
    """Per-row instructions for one UNet call (rows = the concatenated batch).

    Batched passes use the index fields; the reference's separate passes record what the
    first pass computed (``record_*``) and hand it to the second (``replay_*``).
    """

    # Self-attention: row i attends with the queries/keys of row qk_source[i].
    qk_source: torch.Tensor | None = None
    # Cross-attention: row i (where restandardise_to[i] >= 0) has its logits re-standardised
    # to the mean of its own and row restandardise_to[i]'s per-query mean and std.
    restandardise_to: torch.Tensor | None = None
    # Rows whose cross-attention maps feed the adaptive switch, and the map size.
    capture_rows: torch.Tensor | None = None
    map_size: int = 32
    # Separate passes: keep each self-attention layer's (q, k) / cross-attention logits ...
    record_self: list | None = None
    record_cross: list | None = None
    # ... and use them, layer by layer, in the next call (same order of layers).
    replay_self: list | None = None
    replay_cross: list | None = None
    # Filled during the call: sum over cross-attention layers of the reduced maps.
    map_sum: torch.Tensor | None = None
    map_layers: int = 0
    _self_cursor: int = 0
    _cross_cursor: int = 0

    def next_self(self):
        item = self.replay_self[self._self_cursor]
        self._self_cursor += 1
        return item

    def next_cross(self) -> torch.Tensor:
        item = self.replay_cross[self._cross_cursor]
        self._cross_cursor += 1
        return item


@dataclass
class PlanHolder:
    """Shared by all processors of one UNet; the sampler swaps the plan between calls."""

    plan: InjectionPlan = field(default_factory=InjectionPlan)


def spatial_map(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Cross-attention logits (N, heads, HW, K) -> (N, size, size) map in [0, 1].

    The reference's reduction: softmax over the *queries* (where in the image each context
    token looks), mean over tokens and heads, divided by its maximum, resized bilinearly to
    the latent size and clamped.
    """
    n, _, hw, _ = logits.shape
    side = round(hw**0.5)
    if side * side != hw:
        raise ValueError(f"cross-attention over {hw} positions is not a square feature map")
    m = torch.softmax(logits.float(), dim=2).mean(dim=3).mean(dim=1)  # (N, HW)
    m = m / m.amax(dim=1, keepdim=True)
    m = m.view(n, 1, side, side)
    m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
    return m.squeeze(1).clamp(0, 1)


class TwoStageAttnProcessor:
    """Self/cross attention with optional injection, re-standardisation and map capture."""

    def __init__(self, holder: PlanHolder) -> None:
        self.holder = holder

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if (
            attention_mask is not None
            or attn.group_norm is not None
            or attn.spatial_norm is not None
        ):
            raise NotImplementedError(
                "TwoStageAttnProcessor supports plain self/cross attention layers only "
                "(no attention mask, group or spatial norm)"
            )
        plan = self.holder.plan
        if hidden_states.ndim != 3:
            raise NotImplementedError("TwoStageAttnProcessor expects (batch, tokens, dim) inputs")
        b, length, _ = hidden_states.shape
        cross = encoder_hidden_states is not None
        context = hidden_states
        if cross:
            context = encoder_hidden_states
            if attn.norm_cross is not None:
                context = attn.norm_encoder_hidden_states(context)
        q = attn.to_q(hidden_states)
        k = attn.to_k(context)
        v = attn.to_v(context)
        heads = attn.heads
        d = k.shape[-1] // heads
        q = q.view(b, -1, heads, d).transpose(1, 2)
        k = k.view(b, -1, heads, d).transpose(1, 2)
        v = v.view(b, -1, heads, d).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        if not cross:
            if plan.record_self is not None:
                plan.record_self.append((q, k))
            if plan.replay_self is not None:
                q, k = plan.next_self()
            elif plan.qk_source is not None:
                q, k = q[plan.qk_source], k[plan.qk_source]
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        elif (
            plan.restandardise_to is None
            and plan.capture_rows is None
            and plan.record_cross is None
            and plan.replay_cross is None
        ):
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        else:
            logits = (q.float() @ k.float().transpose(-1, -2)) * attn.scale  # (B, h, L, K)
            if plan.capture_rows is not None:
                m = spatial_map(logits[plan.capture_rows], plan.map_size)
                plan.map_sum = m if plan.map_sum is None else plan.map_sum + m
                plan.map_layers += 1
            if plan.record_cross is not None:
                plan.record_cross.append(logits)
            if plan.replay_cross is not None:
                logits = restandardise(logits, plan.next_cross())
            elif plan.restandardise_to is not None:
                rows = torch.nonzero(plan.restandardise_to >= 0).flatten()
                if rows.numel():
                    logits = logits.clone()
                    src = logits[plan.restandardise_to[rows]]
                    logits[rows] = restandardise(logits[rows], src)
            out = torch.softmax(logits, dim=-1).to(v.dtype) @ v
        out = out.transpose(1, 2).reshape(b, length, heads * d)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def restandardise(logits: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Per query, move the logits' mean and std halfway to those of ``source``.

    (logit - mean) / std * (0.5 std_src + 0.5 std) + (0.5 mean_src + 0.5 mean), statistics
    over the context tokens (unbiased std, as the reference's ``Tensor.std``).
    """
    mean, std = logits.mean(dim=-1, keepdim=True), logits.std(dim=-1, keepdim=True)
    mean_s, std_s = source.mean(dim=-1, keepdim=True), source.std(dim=-1, keepdim=True)
    target_mean = 0.5 * mean_s + 0.5 * mean
    target_std = 0.5 * std_s + 0.5 * std
    return (logits - mean) / std.clamp_min(1e-12) * target_std + target_mean


@contextmanager
def two_stage_processors(model):
    """Install :class:`TwoStageAttnProcessor` on every attention layer of ``model``.

    Yields the :class:`PlanHolder` the sampler fills before each call; the model's previous
    processors are restored afterwards, also on error.
    """
    previous = model.attn_processors
    holder = PlanHolder()
    model.set_attn_processor({name: TwoStageAttnProcessor(holder) for name in previous})
    try:
        yield holder
    finally:
        model.set_attn_processor(dict(previous))
