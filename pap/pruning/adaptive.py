"""`prune.layers: adaptive`: Adapt-Pruner's layer-wise sparsity (docs/METHOD.md §8).

A layer whose output is close to its input (high cosine similarity `c_l`) changes the
residual stream little and is pruned more. Both rules read the window's mean cosine of each
decoder layer's input and output hidden states through the same normalised importance

    z_l = (r_l - mean(r)) / max_m |r_m - mean(r)|   in [-1, 1] (0 if all equal),  r_l = 1 - c_l

`prune.adapt_rule` turns it into this increment's per-layer removals:

* `published` (default, Adapt-Pruner's update): a cumulative target sparsity relative to the
  source model's widths, raised additively each increment,

      s_l <- clip(s_l + delta - A * z_l, 0, 0.99),   delta = prune.increment, A = prune.adapt_amplitude

  where the s_l carried in is the layer's realised sparsity (1 - width / source width, per
  kind), so it is read off the `Arch` and a resumed run plans exactly as an uninterrupted one.
  Layer l loses (new s_l - realised s_l) x its source width of each kind.
* `scaled`: this increment loses `prune.increment` of the *current* parameters, spread in
  proportion to (1 - A z_l) (A < 1), so s_l lies in [c(1-A), c(1+A)].

The attention unit (`prune.adapt_unit`) is a whole KV group (`group`, default: the group's
query heads go one after another, the KV head with the last) or a single query head
(`head`). The fractional counts per layer and kind become whole removals by serving, one at
a time, the layer and kind furthest below its wanted count, for as long as the next unit
brings the removed parameters closer to the increment's budget: the increment hits its
budget to within half of one unit (a group, a head or an FFN channel), and each layer's
count is within one unit of what it wants. Inside a layer the group, head or channel with
the lowest first-order Taylor score (`prune.metric: first`; a group scores the sum of its
query heads) goes, each choice seeing the scores of what is left. The hidden size is not
pruned: the targets are per layer.

Every function here is a pure function of the fully reduced scores and the `Arch`s, so all
ranks plan the same increment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from pap.arch import Arch
from pap.pruning.select import Floors, GroupScores, Removal, _removable_heads, head_costs, one_layer, remove_from_arch

RULES = ("published", "scaled")
UNITS = ("group", "head")
MAX_SPARSITY = 0.99
"""The published rule's ceiling on a layer's cumulative sparsity (a layer never empties)."""


# ---- layer importance ---------------------------------------------------------------------
def normalised_importance(cosine: Sequence[float]) -> List[float]:
    """z_l: importance 1 - c_l, centred and divided by its largest deviation (0 when all equal)."""
    importance = [1.0 - c for c in cosine]
    mean = sum(importance) / len(importance)
    span = max(abs(r - mean) for r in importance)
    return [(r - mean) / span if span > 0 else 0.0 for r in importance]


def layer_weights(cosine: Sequence[float], amplitude: float) -> List[float]:
    """(1 - A z_l) per layer: how much more (> 1) or less (< 1) than average layer l is pruned
    under the `scaled` rule."""
    return [1.0 - amplitude * z for z in normalised_importance(cosine)]


# ---- sizes --------------------------------------------------------------------------------
def prunable_params(arch: Arch, layer: int) -> int:
    """Parameters of layer `layer` that heads and FFN channels hold (norms excluded)."""
    h, d = arch.hidden_size, arch.head_dim
    q, kv = arch.num_heads(layer), arch.num_kv_heads(layer)
    return (2 * q + 2 * kv) * d * h + 3 * arch.ffn[layer] * h


def attn_params(arch: Arch, layer: int) -> int:
    """Parameters of layer `layer`'s query, key, value and output projections."""
    return (2 * arch.num_heads(layer) + 2 * arch.num_kv_heads(layer)) * arch.head_dim * arch.hidden_size


def attn_units(arch: Arch, layer: int, unit: str) -> int:
    """Attention units layer `layer` holds: KV groups that still serve a head, or query heads."""
    return arch.num_kv_heads(layer) if unit == "group" else arch.num_heads(layer)


# ---- the two rules ------------------------------------------------------------------------
def layer_sparsity(arch: Arch, cosine: Sequence[float], amplitude: float, budget: float) -> List[float]:
    """`scaled` rule: s_l per layer, the fraction of its heads and FFN channels layer l loses
    this increment, scaled so the layers lose `budget` parameters together (capped at 1)."""
    weights = layer_weights(cosine, amplitude)
    sizes = [prunable_params(arch, l) for l in range(arch.num_layers)]
    scale = budget / sum(w * p for w, p in zip(weights, sizes))
    return [min(1.0, scale * w) for w in weights]


def realised_sparsity(arch: Arch, source: Arch, unit: str) -> Tuple[List[float], List[float]]:
    """(attention, FFN) sparsity of each layer relative to `source`: 1 - width / source width."""
    layers = range(arch.num_layers)
    attn = [1.0 - attn_units(arch, l, unit) / attn_units(source, l, unit) for l in layers]
    ffn = [1.0 - arch.ffn[l] / source.ffn[l] for l in layers]
    return attn, ffn


def published_targets(arch: Arch, source: Arch, cosine: Sequence[float], delta: float, amplitude: float,
                      unit: str) -> Tuple[List[float], List[float]]:
    """`published` rule: each layer's new cumulative (attention, FFN) sparsity relative to
    `source`, clip(s_l + delta - A z_l, 0, 0.99) from the realised s_l of each kind."""
    step = [delta - amplitude * z for z in normalised_importance(cosine)]
    attn, ffn = realised_sparsity(arch, source, unit)
    clip = lambda s: min(max(s, 0.0), MAX_SPARSITY)  # noqa: E731
    return [clip(s + d) for s, d in zip(attn, step)], [clip(s + d) for s, d in zip(ffn, step)]


@dataclass(frozen=True)
class IncrementPlan:
    """What an increment wants before whole units are chosen."""

    attn: List[float]
    """Attention units (KV groups or query heads) each layer should lose (reals)."""
    ffn: List[float]
    """FFN channels each layer should lose (reals)."""
    budget: float
    """Parameters the increment removes (never past the target)."""
    sparsity: List[float]
    """The per-layer sparsity planned (logged): the new cumulative FFN target (published) or
    this increment's fraction (scaled)."""


def wanted(arch: Arch, cosine: Sequence[float], increment: float, amplitude: float, target: int,
           rule: str = "scaled", unit: str = "head", source: Optional[Arch] = None) -> IncrementPlan:
    """The increment's wanted removals per layer and kind, and its budget.

    `source` is the `Arch` the run started pruning from (the published rule's reference
    widths; the current `arch` when not given)."""
    layers = range(arch.num_layers)
    room = arch.num_params() - target
    unit_size = [attn_params(arch, l) / max(1, attn_units(arch, l, unit)) for l in layers]
    if rule == "published":
        source = source if source is not None else arch
        attn_target, ffn_target = published_targets(arch, source, cosine, increment, amplitude, unit)
        attn_now, ffn_now = realised_sparsity(arch, source, unit)
        attn = [max(0.0, t - s) * attn_units(source, l, unit) for l, (t, s) in enumerate(zip(attn_target, attn_now))]
        ffn = [max(0.0, t - s) * source.ffn[l] for l, (t, s) in enumerate(zip(ffn_target, ffn_now))]
        sparsity = ffn_target
    else:
        sparsity = layer_sparsity(arch, cosine, amplitude, min(increment * arch.num_params(), room))
        attn = [s * attn_units(arch, l, unit) for l, s in enumerate(sparsity)]
        ffn = [s * arch.ffn[l] for l, s in enumerate(sparsity)]
    budget = sum(a * size for a, size in zip(attn, unit_size)) + sum(f * 3 * arch.hidden_size for f in ffn)
    if budget > room:  # the last increment: the same shape, scaled down to the target
        scale = max(0, room) / budget
        attn, ffn, budget = [a * scale for a in attn], [f * scale for f in ffn], float(max(0, room))
    return IncrementPlan(attn, ffn, budget, sparsity)


# ---- whole units --------------------------------------------------------------------------
def _first_head(heads_per_group: List[int], group: int) -> int:
    """Index of KV group `group`'s first query head in group-major order."""
    return sum(heads_per_group[:group])


def _next_attn(arch: Arch, layer: int, attn: torch.Tensor, unit: str,
               floors: Floors) -> Optional[Tuple[List[int], float]]:
    """The layer's next attention unit to go: (head indices to remove one after another, each
    in the shape the previous left; parameters removed), or None at the floors."""
    groups = arch.heads_per_group[layer]
    heads = arch.num_heads(layer)
    if unit == "head":
        if heads <= floors.heads:
            return None
        allowed = _removable_heads(groups, floors.kv_heads)
        if not allowed.any():
            return None
        head = int(torch.argmin(attn.masked_fill(~allowed, float("inf"))))
        return [head], float(head_costs(groups, arch.hidden_size, arch.head_dim)[head])
    if arch.num_kv_heads(layer) <= floors.kv_heads:
        return None
    best = None
    for group, n in enumerate(groups):
        if n == 0 or heads - n < floors.heads:
            continue
        start = _first_head(groups, group)
        score = float(attn[start:start + n].sum())
        if best is None or score < best[0]:
            best = (score, start, n)
    if best is None:
        return None
    _, start, n = best
    return [start] * n, float((2 * n + 2) * arch.head_dim * arch.hidden_size)


def increment_steps(scores: GroupScores, arch: Arch, cosine: Sequence[float], increment: float,
                    amplitude: float, target: int, floors: Floors = Floors(), rule: str = "scaled",
                    unit: str = "head", source: Optional[Arch] = None) -> List[Tuple[Removal, Arch]]:
    """`plan_increment`'s removals, each with the `Arch` right after it."""
    plan = wanted(arch, cosine, increment, amplitude, target, rule, unit, source)
    attn = [v.double() for v in scores.attn]
    ffn = [v.double() for v in scores.ffn]
    want = {(l, kind): w for l in range(arch.num_layers) for kind, w in (("attn", plan.attn[l]), ("ffn", plan.ffn[l]))}
    done = {slot: 0 for slot in want}
    closed = set()
    removed, steps = 0.0, []
    # The last increment (its budget capped by the target) goes on until the target is met.
    last = plan.budget >= arch.num_params() - target
    while arch.num_params() > target:
        # The layer and kind furthest below its wanted count whose next unit brings the
        # total closer to the budget (the first unit of a positive budget always goes).
        choice = None
        for slot in sorted(want, key=lambda s: (-(want[s] - done[s]), s[0], s[1])):
            if slot in closed:
                continue
            layer, kind = slot
            if kind == "attn":
                unit_plan = _next_attn(arch, layer, attn[layer], unit, floors)
            elif arch.ffn[layer] > floors.ffn:
                unit_plan = [int(torch.argmin(ffn[layer]))], 3.0 * arch.hidden_size
            else:
                unit_plan = None
            if unit_plan is None:
                closed.add(slot)
                continue
            if 2 * (plan.budget - removed) >= unit_plan[1] or last or (not steps and plan.budget > 0):
                choice = (slot, unit_plan)
                break
        if choice is None:
            break
        (layer, kind), (indices, cost) = choice
        vector = attn if kind == "attn" else ffn
        for index in indices:
            value = float(vector[layer][index])
            candidates = (value, float("inf"), float("inf")) if kind == "attn" else (float("inf"), value, float("inf"))
            removal = Removal(kind, one_layer(kind, arch, layer, index), value, candidates)
            arch = remove_from_arch(arch, removal)
            steps.append((removal, arch))
            vector[layer] = torch.cat([vector[layer][:index], vector[layer][index + 1:]])
        done[(layer, kind)] += 1
        removed += cost
    return steps


def plan_increment(scores: GroupScores, arch: Arch, cosine: Sequence[float], increment: float,
                   amplitude: float, target: int, floors: Floors = Floors(), rule: str = "scaled",
                   unit: str = "head", source: Optional[Arch] = None) -> List[Removal]:
    """One increment's removals, in order (each index in the shape the previous ones left).

    Removes the increment's budget (never planning past `target`) to within half a unit,
    spread over layers by the chosen rule. At least one unit goes when any can. The
    keyword defaults are the `scaled` rule with single heads; a run's choice comes from
    `RoundSettings` (default: `published` with KV groups).
    """
    return [removal for removal, _ in increment_steps(scores, arch, cosine, increment, amplitude, target,
                                                      floors, rule, unit, source)]
