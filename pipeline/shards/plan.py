"""Deterministic assignment of whole identities to shards, before anything is generated.

Producers that generate in parallel (one task per shard) need to know each shard's
identity range up front; a plan that depends only on the per-identity counts and the
targets makes re-runs and resumes land on the same shard boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from synthface.pipeline.errors import InputError


@dataclass(frozen=True)
class ShardPlan:
    index: int
    first_identity: int
    last_identity: int
    num_samples: int


def plan_shards(
    samples_per_identity: Sequence[int],
    *,
    max_samples: int = 10000,
    max_bytes: int = 1 << 30,
    bytes_per_sample: int = 20000,
) -> list[ShardPlan]:
    """Greedy identity packing: a shard closes before it would exceed either target.

    Identities are never split, so an identity larger than the targets gets a shard of
    its own (the only case in which a shard exceeds them).
    """
    if max_samples < 1 or max_bytes < 1 or bytes_per_sample < 1:
        raise InputError(
            f"shard targets must be >= 1 (max_samples={max_samples}, max_bytes={max_bytes}, "
            f"bytes_per_sample={bytes_per_sample})"
        )
    cap = min(max_samples, max(1, max_bytes // bytes_per_sample))
    plans: list[ShardPlan] = []
    first, count = 0, 0
    for identity, n in enumerate(samples_per_identity):
        n = int(n)
        if n < 1:
            raise InputError(f"identity {identity}: needs at least one sample (got {n})")
        if count and count + n > cap:
            plans.append(ShardPlan(len(plans), first, identity - 1, count))
            first, count = identity, 0
        count += n
    if count:
        plans.append(ShardPlan(len(plans), first, len(samples_per_identity) - 1, count))
    return plans
