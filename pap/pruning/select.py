"""Choosing the next minimal group to remove (docs/METHOD.md §3-4, paper Eq. 10).

Given global group scores — per layer `A[l][h]` (query heads), `B[l][j]` (FFN channels),
and `C[i]` (hidden channels, summed over layers) — the three candidates are

    S_attn = Σ_l min_h A[l][h]   (the least salient head of every layer)
    S_ffn  = Σ_l min_j B[l][j]   (the least salient channel of every layer)
    S_stem = min_i C[i]

and the smallest is removed. Ties break to the lowest index (head, channel, then the
order attn < ffn < stem). `normalize="params"` divides each candidate by the
parameters it would remove; floors keep a dimension from shrinking below a minimum.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

import torch

from pap.arch import Arch

KINDS = ("attn", "ffn", "stem")
UNTOUCHED = -1
"""An attn/ffn removal's index for a layer it leaves whole (`prune.layers: greedy | adaptive`
remove one head or channel of one layer; `uniform` one of every layer)."""


@dataclass(frozen=True)
class Floors:
    """Smallest sizes pruning may leave: query heads and KV heads per layer, FFN width, hidden size.

    `kv_heads` also keeps every layer placeable over that many tensor-parallel ranks
    (each rank holds whole KV groups), without making any decision depend on the TP size.
    """

    heads: int = 1
    ffn: int = 1
    hidden: int = 1
    kv_heads: int = 1


@dataclass
class GroupScores:
    """Fully reduced group saliencies of the whole model (identical on every rank)."""

    attn: List[torch.Tensor]   # per layer, [heads of that layer]
    ffn: List[torch.Tensor]    # per layer, [ffn width of that layer]
    stem: torch.Tensor         # [hidden]


@dataclass(frozen=True)
class Removal:
    """One minimal group: `kind`, and the removed index per layer (attn/ffn; `UNTOUCHED` for a
    layer it leaves whole) or the hidden index."""

    kind: str
    indices: tuple
    score: float
    candidates: tuple  # (S_attn, S_ffn, S_stem), inf where not allowed

    def layer_index(self, layer: int) -> Optional[int]:
        """The head or channel this attn/ffn removal takes from `layer`, or None."""
        index = self.indices[layer]
        return None if index == UNTOUCHED else index

    def to_dict(self) -> dict:
        return {"kind": self.kind, "indices": list(self.indices), "score": self.score,
                "candidates": dict(zip(KINDS, self.candidates))}


def remove_from_arch(arch: Arch, removal: Removal) -> Arch:
    """The architecture after `removal` (a KV head goes when its last query head goes)."""
    if removal.kind == "ffn":
        return replace(arch, ffn=[w - (i != UNTOUCHED) for w, i in zip(arch.ffn, removal.indices)])
    if removal.kind == "stem":
        return replace(arch, hidden_size=arch.hidden_size - 1)
    groups = []
    for layer, head in enumerate(removal.indices):
        counts = list(arch.heads_per_group[layer])
        if head != UNTOUCHED:
            counts[head_group(counts, head)] -= 1
        groups.append(counts)
    return replace(arch, heads_per_group=groups)


def head_group(heads_per_group: List[int], head: int) -> int:
    """Index of the KV group that query head `head` (0-based, group-major order) belongs to."""
    seen = 0
    for group, count in enumerate(heads_per_group):
        if head < seen + count:
            return group
        seen += count
    raise IndexError(f"head {head} out of range for groups {heads_per_group}")


def _removable_heads(heads_per_group: List[int], min_kv_heads: int, device=None) -> torch.Tensor:
    """Mask of query heads whose removal keeps at least `min_kv_heads` KV heads (on `device`)."""
    kv_heads = sum(1 for n in heads_per_group if n > 0)
    mask = []
    for n in heads_per_group:
        mask += [n > 1 or kv_heads > min_kv_heads] * n
    return torch.tensor(mask, dtype=torch.bool, device=device)


def choose(scores: GroupScores, arch: Arch, normalize: Optional[str] = None,
           floors: Floors = Floors(), kinds: Sequence[str] = KINDS) -> Optional[Removal]:
    """The group to remove next, among `kinds`, or None when each is at its floor."""
    layers = range(arch.num_layers)
    candidates = [float("inf")] * 3
    picks = [(), (), ()]
    if "attn" in kinds and all(arch.num_heads(l) > floors.heads for l in layers):
        allowed = [_removable_heads(arch.heads_per_group[l], floors.kv_heads, scores.attn[l].device) for l in layers]
        if all(mask.any() for mask in allowed):
            masked = [scores.attn[l].masked_fill(~allowed[l], float("inf")) for l in layers]
            heads = tuple(int(torch.argmin(masked[l])) for l in layers)
            candidates[0] = float(sum(scores.attn[l][heads[l]] for l in layers))
            picks[0] = heads
    if "ffn" in kinds and all(w > floors.ffn for w in arch.ffn):
        channels = tuple(int(torch.argmin(scores.ffn[l])) for l in layers)
        candidates[1] = float(sum(scores.ffn[l][channels[l]] for l in layers))
        picks[1] = channels
    if "stem" in kinds and arch.hidden_size > floors.hidden:
        channel = int(torch.argmin(scores.stem))
        candidates[2] = float(scores.stem[channel])
        picks[2] = (channel,)
    if all(c == float("inf") for c in candidates):
        return None
    ranked = list(candidates)
    if normalize == "params":
        for k, kind in enumerate(KINDS):
            if ranked[k] != float("inf"):
                removal = Removal(kind, picks[k], candidates[k], ())
                ranked[k] /= arch.num_params() - remove_from_arch(arch, removal).num_params()
    elif normalize is not None:
        raise ValueError(f"normalize must be None or 'params', got {normalize!r}")
    best = min(range(3), key=lambda k: (ranked[k], k))
    return Removal(KINDS[best], picks[best], candidates[best], tuple(candidates))


def one_layer(kind: str, arch: Arch, layer: int, index: int) -> tuple:
    """`Removal.indices` of a removal that takes `index` from `layer` only."""
    indices = [UNTOUCHED] * arch.num_layers
    indices[layer] = index
    return tuple(indices)


def head_costs(heads_per_group: List[int], hidden: int, head_dim: int) -> torch.Tensor:
    """Parameters removed with each query head of a layer (its K/V rows too when it is the
    last head of its group)."""
    unit = 2 * hidden * head_dim
    return torch.tensor([float(unit * (2 if n == 1 else 1)) for n in heads_per_group for _ in range(n)],
                        dtype=torch.float64)


def choose_greedy(scores: GroupScores, arch: Arch, normalize: Optional[str] = None,
                  floors: Floors = Floors(), kinds: Sequence[str] = KINDS,
                  align: Optional[int] = None) -> Optional[Removal]:
    """`prune.layers: greedy`: the least salient single group of the whole model, a head or
    FFN channel of one layer (its own score) or a hidden channel, or None at the floors.

    Eq. 10 with the per-layer minima not summed: every head of every layer competes with
    every FFN channel and hidden channel. `normalize="params"` divides each score by the
    parameters that group takes. `align`: only FFN channels of layers whose width is not a
    multiple of it compete (the alignment removals of `prune.final_multiple_of`). Ties go
    to the lowest (kind, layer, index), kinds ordered attn < ffn < stem.
    """
    if normalize not in (None, "params"):
        raise ValueError(f"normalize must be None or 'params', got {normalize!r}")
    inf = float("inf")
    best = [(inf, None, None)] * 3  # per kind: (ranked score, layer, index)
    for layer in range(arch.num_layers):
        counts = arch.heads_per_group[layer]
        if "attn" in kinds and arch.num_heads(layer) > floors.heads:
            ranked = scores.attn[layer].double()
            if normalize == "params":
                ranked = ranked / head_costs(counts, arch.hidden_size, arch.head_dim)
            ranked = ranked.masked_fill(~_removable_heads(counts, floors.kv_heads, ranked.device), inf)
            head = int(torch.argmin(ranked))
            if float(ranked[head]) < best[0][0]:
                best[0] = (float(ranked[head]), layer, head)
        if "ffn" in kinds and arch.ffn[layer] > floors.ffn and (align is None or arch.ffn[layer] % align):
            ranked = scores.ffn[layer].double() / (3 * arch.hidden_size if normalize == "params" else 1)
            channel = int(torch.argmin(ranked))
            if float(ranked[channel]) < best[1][0]:
                best[1] = (float(ranked[channel]), layer, channel)
    if "stem" in kinds and arch.hidden_size > floors.hidden:
        channel = int(torch.argmin(scores.stem))
        ranked = float(scores.stem[channel])
        if normalize == "params":
            ranked /= arch.num_params() - replace(arch, hidden_size=arch.hidden_size - 1).num_params()
        best[2] = (ranked, None, channel)
    if all(b[0] == inf for b in best):
        return None
    raw = [inf] * 3
    picks = []
    for k, (ranked, layer, index) in enumerate(best):
        if ranked == inf:
            picks.append(())
            continue
        if k == 2:
            raw[k], pick = float(scores.stem[index]), (index,)
        else:
            raw[k] = float((scores.attn if k == 0 else scores.ffn)[layer][index])
            pick = one_layer(KINDS[k], arch, layer, index)
        picks.append(pick)
    k = min(range(3), key=lambda k: (best[k][0], k))
    return Removal(KINDS[k], picks[k], raw[k], tuple(raw))


def aligning_kind(arch: Arch, multiple: int) -> Optional[str]:
    """The kind whose width is not yet a multiple of `multiple` (FFN first, then hidden), or None.

    Attention widths are heads x head_dim, already multiples of head_dim."""
    if any(width % multiple for width in arch.ffn):
        return "ffn"
    if arch.hidden_size % multiple:
        return "stem"
    return None
