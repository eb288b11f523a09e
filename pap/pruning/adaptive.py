"""`prune.layers: adaptive`: Adapt-Pruner's layer-wise sparsity (docs/METHOD.md §8).

A layer whose output is close to its input (high cosine similarity) changes the residual
stream little and is pruned more. From the window's mean cosine similarity `c_l` of each
decoder layer's input and output hidden states:

    importance   r_l = 1 - c_l
    spread       z_l = (r_l - mean(r)) / max_m |r_m - mean(r)|     in [-1, 1] (0 if all equal)
    sparsity     s_l = c * (1 - A * z_l)                            in [c(1-A), c(1+A)], capped at 1

`A` is `prune.adapt_amplitude` (0 <= A < 1), and `c` is set so that the layers together
lose `prune.increment` of the model's current parameters: sum_l s_l * P_l = increment * P,
with P_l the heads' and FFN's parameters of layer l. A layer loses s_l of its query heads
and s_l of its FFN channels; the fractional counts become integers per kind by largest
remainder over the layers (the total rounded to nearest), so small layers still lose a head
now and then. Inside a layer, the heads and channels with the lowest first-order Taylor
scores (`prune.metric: first`, |w g| summed over the output group) go, one at a time, each
choice seeing the scores of what is left. The hidden size is not pruned: the targets are
per layer.

Every function here is a pure function of the fully reduced scores and the `Arch`, so all
ranks plan the same increment.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch

from pap.arch import Arch
from pap.pruning.select import Floors, GroupScores, Removal, _removable_heads, one_layer, remove_from_arch


def layer_weights(cosine: Sequence[float], amplitude: float) -> List[float]:
    """(1 - A z_l) per layer: how much more (> 1) or less (< 1) than average layer l is pruned."""
    importance = [1.0 - c for c in cosine]
    mean = sum(importance) / len(importance)
    span = max(abs(r - mean) for r in importance)
    return [1.0 - amplitude * ((r - mean) / span if span > 0 else 0.0) for r in importance]


def prunable_params(arch: Arch, layer: int) -> int:
    """Parameters of layer `layer` that heads and FFN channels hold (norms excluded)."""
    h, d = arch.hidden_size, arch.head_dim
    q, kv = arch.num_heads(layer), arch.num_kv_heads(layer)
    return (2 * q + 2 * kv) * d * h + 3 * arch.ffn[layer] * h


def layer_sparsity(arch: Arch, cosine: Sequence[float], amplitude: float, budget: float) -> List[float]:
    """s_l per layer: the fraction of its heads and FFN channels layer l loses this increment,
    scaled so the layers lose `budget` parameters together (capped at 1)."""
    weights = layer_weights(cosine, amplitude)
    sizes = [prunable_params(arch, l) for l in range(arch.num_layers)]
    scale = budget / sum(w * p for w, p in zip(weights, sizes))
    return [min(1.0, scale * w) for w in weights]


def allocate(wanted: Sequence[float], room: Sequence[int]) -> List[int]:
    """Integer counts per layer near `wanted` (reals) summing to round(sum(wanted)): floors,
    then +1 by largest remainder (ties: lowest layer), never above `room`."""
    counts = [min(int(math.floor(w)), r) for w, r in zip(wanted, room)]
    total = min(int(math.floor(sum(wanted) + 0.5)), sum(room))
    order = sorted(range(len(wanted)), key=lambda l: (-(wanted[l] - math.floor(wanted[l])), l))
    while sum(counts) < total:
        grown = False
        for layer in order:
            if sum(counts) < total and counts[layer] < room[layer]:
                counts[layer] += 1
                grown = True
        if not grown:
            break
    return counts


def plan_increment(scores: GroupScores, arch: Arch, cosine: Sequence[float], increment: float,
                   amplitude: float, target: int, floors: Floors = Floors()) -> List[Removal]:
    """One increment's removals, in order (each index in the shape the previous ones left).

    Removes about `increment` of the current parameters (never planning past `target`),
    spread over layers by `layer_sparsity`. At least one group goes when any can.
    """
    return [removal for removal, _ in increment_steps(scores, arch, cosine, increment, amplitude, target, floors)]


def increment_steps(scores: GroupScores, arch: Arch, cosine: Sequence[float], increment: float,
                    amplitude: float, target: int, floors: Floors = Floors()) -> List[Tuple[Removal, Arch]]:
    """`plan_increment`'s removals, each with the `Arch` right after it."""
    budget = min(increment * arch.num_params(), arch.num_params() - target)
    sparsity = layer_sparsity(arch, cosine, amplitude, budget)
    layers = range(arch.num_layers)
    head_room = [max(0, arch.num_heads(l) - floors.heads) for l in layers]
    ffn_room = [max(0, arch.ffn[l] - floors.ffn) for l in layers]
    heads = allocate([s * arch.num_heads(l) for l, s in enumerate(sparsity)], head_room)
    channels = allocate([s * arch.ffn[l] for l, s in enumerate(sparsity)], ffn_room)
    if not sum(heads) and not sum(channels):
        # A budget under half a group per kind: the FFN channel of the layer that wants one most.
        wanted = [(s * arch.ffn[l], -l) for l, s in enumerate(sparsity) if ffn_room[l]]
        if wanted:
            channels[-max(wanted)[1]] = 1
    removals = []
    for layer in layers:
        attn, ffn = scores.attn[layer].double(), scores.ffn[layer].double()
        for _ in range(heads[layer]):
            allowed = _removable_heads(arch.heads_per_group[layer], floors.kv_heads)
            if not allowed.any():
                break
            head = int(torch.argmin(attn.masked_fill(~allowed, float("inf"))))
            removal = Removal("attn", one_layer("attn", arch, layer, head), float(attn[head]),
                              (float(attn[head]), float("inf"), float("inf")))
            arch = remove_from_arch(arch, removal)
            removals.append((removal, arch))
            attn = torch.cat([attn[:head], attn[head + 1:]])
        for _ in range(channels[layer]):
            channel = int(torch.argmin(ffn))
            removal = Removal("ffn", one_layer("ffn", arch, layer, channel), float(ffn[channel]),
                              (float("inf"), float(ffn[channel]), float("inf")))
            arch = remove_from_arch(arch, removal)
            removals.append((removal, arch))
            ffn = torch.cat([ffn[:channel], ffn[channel + 1:]])
    return removals


def planned_targets(arch: Arch, cosine: Sequence[float], increment: float, amplitude: float,
                    target: int) -> List[float]:
    """The per-layer sparsity of the next increment (logged with its first removal)."""
    budget = min(increment * arch.num_params(), arch.num_params() - target)
    return layer_sparsity(arch, cosine, amplitude, budget)
