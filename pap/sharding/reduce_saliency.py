"""Global group scores from every rank's partial saliency sums (one small tensor collective chain).

Every rank lays the whole model's scores out in one flat vector — each layer's heads,
then each layer's FFN channels, then the hidden channels — fills in what it holds and
leaves zeros elsewhere; SUM all-reduces then assemble the global vector:

* Heads and FFN channels: a TP rank holds complete scores for its own heads/channels
  (which ones: `pap.sharding.layout.LayerPlacement`, megatron's even split included), and
  a layer lives on one PP stage; every other rank adds zeros, so these sums are exact.
* Hidden channels: each TP rank saw only its columns of the row-parallel weights, and
  each stage only its layers: the SUM over TP, then over PP, adds the partial sums.
* Data parallelism: with the plain optimizer, gradients are already averaged over DP
  ranks, so every replica holds the same sums. With the distributed optimizer each DP
  rank scored only the ranges it owns, and the vector is summed over DP first.

The collectives run on the scores' device (NCCL on GPU), in float64. Every rank ends
with identical numbers, returned on the CPU, so every rank makes the same decision.
"""

from __future__ import annotations

from typing import List

import torch
import torch.distributed as dist

from pap.arch import Arch
from pap.pruning.accumulator import SaliencyAccumulator
from pap.pruning.select import GroupScores
from pap.sharding.full_state import collective_device
from pap.sharding.layout import LayerPlacement


def _segments(arch: Arch) -> List[int]:
    """Lengths of the flat vector's pieces: heads per layer, FFN width per layer, hidden."""
    layers = range(arch.num_layers)
    return [arch.num_heads(l) for l in layers] + [arch.ffn[l] for l in layers] + [arch.hidden_size]


def global_scores(acc: SaliencyAccumulator, arch: Arch, dp_sharded: bool = False,
                  mean: bool = True) -> GroupScores:
    """Mean (over the window's steps) group scores of the whole model, on every rank (CPU tensors).

    `dp_sharded`: each DP rank scored only the gradient ranges it owns (distributed
    optimizer), so the partial vectors are also summed over DP. `mean=False`: the sums.
    """
    from megatron.core import parallel_state as ps


    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    lengths = _segments(arch)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    layers = arch.num_layers
    device = collective_device()
    flat = torch.zeros(sum(lengths), dtype=torch.float64, device=device)
    for layer, scores in acc.attn.items():
        place = LayerPlacement(arch, layer, tp, tp_rank)
        heads = torch.tensor(place.heads, dtype=torch.long, device=device)
        flat.index_copy_(0, starts[layer] + heads, scores.to(device, torch.float64))
        channels = torch.tensor(list(place.channels), dtype=torch.long, device=device)
        flat.index_copy_(0, starts[layers + layer] + channels, acc.ffn[layer].to(device, torch.float64))
    if acc.stem is not None:
        flat[starts[-1]:] = acc.stem.to(device, torch.float64)
    if dp_sharded:
        dist.all_reduce(flat, group=ps.get_data_parallel_group())
    if tp > 1:
        dist.all_reduce(flat, group=ps.get_tensor_model_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.all_reduce(flat, group=ps.get_pipeline_model_parallel_group())
    flat = flat.cpu() / (max(acc.steps, 1) if mean else 1)
    pieces = list(torch.split(flat, lengths))
    return GroupScores(attn=pieces[:layers], ffn=pieces[layers:2 * layers], stem=pieces[-1])



def layer_cosine_totals(cosine, arch: Arch):
    """(cosine sums, token counts) per layer of the whole global batch over the window
    (`pap.pruning.layer_cosine`), identical on every rank: one float64 SUM all-reduce of
    both over DP (every DP rank saw other sequences), TP and PP (ranks that did not count
    add zeros)."""
    from megatron.core import parallel_state as ps


    layers = arch.num_layers
    flat = torch.zeros(2 * layers, dtype=torch.float64)
    for layer, total in cosine.sums.items():
        flat[layer] = total
        flat[layers + layer] = cosine.tokens[layer]
    flat = flat.to(collective_device())
    for group in (ps.get_data_parallel_group(), ps.get_tensor_model_parallel_group(),
                  ps.get_pipeline_model_parallel_group()):
        if dist.get_world_size(group) > 1:
            dist.all_reduce(flat, group=group)
    flat = flat.cpu()
    return flat[:layers].tolist(), flat[layers:].tolist()


def global_layer_cosine(cosine, arch: Arch) -> List[float]:
    """Each layer's mean cos(input, output) over the window's tokens (1.0 where none counted)."""
    sums, tokens = layer_cosine_totals(cosine, arch)
    return [s / t if t > 0 else 1.0 for s, t in zip(sums, tokens)]
