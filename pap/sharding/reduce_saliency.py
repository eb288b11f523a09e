"""Global group scores from every rank's partial saliency sums (small collectives only).

* Heads and FFN channels: a TP rank holds complete scores for its own heads/channels;
  megatron splits both contiguously by TP rank, so an all-gather over TP in rank order
  gives each layer's global vector. Layers live on one PP stage; an object all-gather
  over PP gives every rank every layer.
* Hidden channels: each TP rank saw only its columns of the row-parallel weights, and
  each stage only its layers: SUM over TP, then over PP.
* Data parallelism: with the plain optimizer, gradients are already averaged over DP
  ranks, so every replica holds the same sums. With the distributed optimizer each DP
  rank scored only the ranges it owns, and the vectors are summed over DP first.
Every rank ends with identical numbers, so every rank makes the same decision.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from pap.pruning.accumulator import SaliencyAccumulator
from pap.pruning.select import GroupScores


def _gather_tp(vector: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    size = ps.get_tensor_model_parallel_world_size()
    if size == 1:
        return vector
    parts = [None] * size
    dist.all_gather_object(parts, vector, group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts)


def _sum_dp(vector: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    vector = vector.clone()
    dist.all_reduce(vector, group=ps.get_data_parallel_group())
    return vector


def global_scores(acc: SaliencyAccumulator, num_layers: int, dp_sharded: bool = False,
                  mean: bool = True) -> GroupScores:
    """Mean (over the window's steps) group scores of the whole model, on every rank.

    `dp_sharded`: each DP rank scored only the gradient ranges it owns (distributed
    optimizer), so the partial vectors are first summed over DP. `mean=False`: the sums.
    """
    from megatron.core import parallel_state as ps

    steps = max(acc.steps, 1) if mean else 1
    local_attn, local_ffn, local_stem = acc.attn, acc.ffn, acc.stem
    if dp_sharded:
        local_attn = {l: _sum_dp(v) for l, v in sorted(local_attn.items())}
        local_ffn = {l: _sum_dp(v) for l, v in sorted(local_ffn.items())}
        local_stem = _sum_dp(local_stem)
    attn = {l: _gather_tp(v) / steps for l, v in local_attn.items()}
    ffn = {l: _gather_tp(v) / steps for l, v in local_ffn.items()}
    stem = local_stem.clone() / steps
    if ps.get_tensor_model_parallel_world_size() > 1:
        dist.all_reduce(stem, group=ps.get_tensor_model_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.all_reduce(stem, group=ps.get_pipeline_model_parallel_group())
        stages = [None] * ps.get_pipeline_model_parallel_world_size()
        dist.all_gather_object(stages, (attn, ffn), group=ps.get_pipeline_model_parallel_group())
        for stage_attn, stage_ffn in stages:
            attn.update(stage_attn)
            ffn.update(stage_ffn)
    return GroupScores(attn=[attn[l] for l in range(num_layers)], ffn=[ffn[l] for l in range(num_layers)],
                       stem=stem)
