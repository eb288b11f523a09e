"""megatron-core's fused tensor layouts, and how they split into separate projections.

Two megatron tensors hold what Hugging Face models keep as several:

* `linear_qkv` stacks, for each KV group g in order, the rows of g's query heads, then
  K_g, then V_g: `[q..q k v | q..q k v | ...]`. After pruning, groups may hold different
  numbers of query heads (`Arch.heads_per_group`); groups with none are gone.
* `linear_fc1` is `[gate; up]` at TP=1 (megatron splits it per TP rank with stride 2,
  which `pap.sharding.full_state` undoes), so the full tensor is a plain concatenation.

Everything here works on full (TP=1) tensors; RoPE needs no permutation because megatron
and the Llama-style families both use the rotate-half convention.
"""

from __future__ import annotations

from typing import List, Tuple

import torch


def kept_groups(heads_per_group: List[int]) -> List[int]:
    """Query heads of the KV groups that still exist (groups with none are removed)."""
    return [n for n in heads_per_group if n > 0]


def qkv_to_megatron(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads_per_group: List[int],
                    head_dim: int) -> torch.Tensor:
    """HF q/k/v projections -> megatron's per-group interleaved `linear_qkv` weight."""
    groups = kept_groups(heads_per_group)
    q_heads = q.reshape(sum(groups), head_dim, -1)
    k_heads = k.reshape(len(groups), head_dim, -1)
    v_heads = v.reshape(len(groups), head_dim, -1)
    blocks, first = [], 0
    for g, n in enumerate(groups):
        blocks += [q_heads[first:first + n], k_heads[g:g + 1], v_heads[g:g + 1]]
        first += n
    return torch.cat(blocks).reshape(-1, q.shape[-1])


def qkv_from_megatron(qkv: torch.Tensor, heads_per_group: List[int], head_dim: int
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron `linear_qkv` weight -> HF (q, k, v) projection weights."""
    groups = kept_groups(heads_per_group)
    heads = qkv.reshape(-1, head_dim, qkv.shape[-1])
    q, k, v, first = [], [], [], 0
    for n in groups:
        q.append(heads[first:first + n])
        k.append(heads[first + n:first + n + 1])
        v.append(heads[first + n + 1:first + n + 2])
        first += n + 2
    hidden = qkv.shape[-1]
    return (torch.cat(q).reshape(-1, hidden), torch.cat(k).reshape(-1, hidden), torch.cat(v).reshape(-1, hidden))


def fc1_to_megatron(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU gate and up projections -> megatron's `linear_fc1` weight."""
    return torch.cat([gate, up])


def fc1_from_megatron(fc1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Megatron `linear_fc1` weight -> SwiGLU (gate, up) projection weights."""
    gate, up = fc1.chunk(2)
    return gate, up
