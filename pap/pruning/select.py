"""Choosing the next minimal group to remove (METHOD.md §3-4, paper Eq. 10).

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
from typing import List, Optional

import torch

from pap.arch import Arch

KINDS = ("attn", "ffn", "stem")


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
    """One minimal group: `kind`, and the removed index per layer (attn/ffn) or the hidden index."""

    kind: str
    indices: tuple
    score: float
    candidates: tuple  # (S_attn, S_ffn, S_stem), inf where not allowed

    def to_dict(self) -> dict:
        return {"kind": self.kind, "indices": list(self.indices), "score": self.score,
                "candidates": dict(zip(KINDS, self.candidates))}


def remove_from_arch(arch: Arch, removal: Removal) -> Arch:
    """The architecture after `removal` (a KV head goes when its last query head goes)."""
    if removal.kind == "ffn":
        return replace(arch, ffn=[w - 1 for w in arch.ffn])
    if removal.kind == "stem":
        return replace(arch, hidden_size=arch.hidden_size - 1)
    groups = []
    for layer, head in enumerate(removal.indices):
        counts = list(arch.heads_per_group[layer])
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


def aligning_kind(arch: Arch, multiple: int) -> Optional[str]:
    """The kind whose width is not yet a multiple of `multiple` (FFN first, then hidden), or None.

    Attention widths are heads x head_dim, already multiples of head_dim."""
    if any(width % multiple for width in arch.ffn):
        return "ffn"
    if arch.hidden_size % multiple:
        return "stem"
    return None
