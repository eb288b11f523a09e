"""Cluster attention: GQA whose key/value heads serve unequal numbers of query heads.

After query-head pruning a KV head may serve 3 query heads while its neighbour serves 1
(docs/METHOD.md §3, paper Appendix A.3). `ClusterSelfAttention` is a megatron-core
`SelfAttention` (plugged in through the layer's ModuleSpec) whose fused `linear_qkv`
holds, per KV group g, `[q rows of g's heads, k_g, v_g]` with any number of query heads
per group. It hands megatron's core attention one K/V head per query head (gathered
with an index, not copied weights), so the core attention runs as plain MHA.

Under tensor parallelism each rank holds whole KV groups (placed by
`pap.sharding.layout`) and is given only its own groups here; its config states its
share times the TP size, so megatron's even split yields this rank's true sizes.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from megatron.core.transformer.attention import SelfAttention


def qkv_row_indices(heads_per_group: Sequence[int]):
    """(query rows, key row per query head, value row per query head), in head units."""
    q_rows, k_rows, v_rows, start = [], [], [], 0
    for n in heads_per_group:
        if n == 0:
            continue
        q_rows += range(start, start + n)
        k_rows += [start + n] * n
        v_rows += [start + n + 1] * n
        start += n + 2
    return q_rows, k_rows, v_rows


class ClusterSelfAttention(SelfAttention):
    """megatron `SelfAttention` with an explicit query-head -> KV-head map.

    `heads_per_group[g]` is the number of query heads KV head g serves (0: head removed),
    for the groups this TP rank holds. The layer's config must say
    `num_attention_heads = num_query_groups = sum(heads) * tp`: core attention then sees
    one K/V head per local query head after the gather.
    """

    def __init__(self, config, submodules, layer_number, heads_per_group: List[int] = (), **kwargs):
        super().__init__(config, submodules, layer_number, **kwargs)
        groups = [n for n in heads_per_group if n > 0]
        if sum(groups) * self.world_size != config.num_attention_heads:
            raise ValueError(f"layer {layer_number}: heads_per_group {list(heads_per_group)} x tp {self.world_size} "
                             f"!= num_attention_heads {config.num_attention_heads}")
        self.heads_per_group = list(heads_per_group)
        head_dim = config.kv_channels
        self.linear_qkv_out_dim = (sum(groups) + 2 * len(groups)) * head_dim
        self.linear_qkv = submodules.linear_qkv(
            config.hidden_size, self.linear_qkv_out_dim * self.world_size, config=config, init_method=config.init_method,
            gather_output=False, bias=config.add_bias_linear or config.add_qkv_bias, skip_bias_add=False,
            is_expert=False, tp_comm_buffer_name="qkv", tp_group=self.pg_collection.tp,
        )
        q_rows, k_rows, v_rows = qkv_row_indices(heads_per_group)
        for name, rows in (("q_rows", q_rows), ("k_rows", k_rows), ("v_rows", v_rows)):
            self.register_buffer(name, torch.tensor(rows, dtype=torch.long), persistent=False)

    def get_query_key_value_tensors(self, hidden_states, key_value_states=None, output_gate=False,
                                    split_qkv=True):
        if output_gate or not split_qkv:
            raise NotImplementedError("cluster attention supports neither gated attention nor fused QKV RoPE")
        mixed_qkv, _ = self.linear_qkv(hidden_states)
        heads = mixed_qkv.view(*mixed_qkv.shape[:2], -1, self.hidden_size_per_attention_head)
        return (heads.index_select(2, self.q_rows), heads.index_select(2, self.k_rows),
                heads.index_select(2, self.v_rows))
