"""Which TP rank holds which heads and FFN channels of a (possibly pruned) model.

megatron-core splits heads and FFN channels evenly over TP ranks. After pruning they no
longer divide: one head or channel fewer per layer leaves ranks unequal. pap places
them itself, contiguously and as evenly as the shape allows:

* KV groups of a layer go to ranks in order, cut where the running count of query heads
  is closest to an equal share, so every rank gets at least one group and no rank
  carries more than one group above its share;
* FFN channels are cut into `tp` contiguous runs whose lengths differ by at most one.

The placement is a pure function of the `Arch` and the TP size, so every rank computes
the same one, and the choice of what to remove never depends on it.
"""

from __future__ import annotations

from typing import List

from pap.arch import Arch
from pap.errors import PapError


def split_groups(heads_per_group: List[int], tp: int) -> List[List[int]]:
    """Contiguous runs of KV-group indices per TP rank, balanced by query heads."""
    groups = [g for g, n in enumerate(heads_per_group) if n > 0]
    if len(groups) < tp:
        raise PapError(f"a layer has {len(groups)} KV heads left, fewer than parallel.tp={tp}; "
                       f"raise prune.min_heads or lower parallel.tp")
    sizes = [heads_per_group[g] for g in groups]
    total = sum(sizes)
    cuts, start = [], 0
    for rank in range(1, tp):
        ideal = total * rank / tp
        best = None
        # the cut lies after group index i (exclusive end), leaving room for the ranks after it
        for end in range(start + 1, len(groups) - (tp - rank) + 1):
            running_here = sum(sizes[:end])
            key = (abs(running_here - ideal), end)
            if best is None or key < best[0]:
                best = (key, end)
        cuts.append(best[1])
        start = best[1]
    bounds = [0] + cuts + [len(groups)]
    return [groups[bounds[r]:bounds[r + 1]] for r in range(tp)]


def split_channels(width: int, tp: int) -> List[range]:
    """`tp` contiguous runs of FFN channels, lengths differing by at most one."""
    if width < tp:
        raise PapError(f"an FFN has {width} channels left, fewer than parallel.tp={tp}; raise prune.min_ffn")
    base, extra = divmod(width, tp)
    runs, start = [], 0
    for rank in range(tp):
        length = base + (1 if rank < extra else 0)
        runs.append(range(start, start + length))
        start += length
    return runs


def needs_placement(arch: Arch, tp: int) -> bool:
    """True when megatron's even split cannot hold `arch` at this TP size."""
    if tp == 1:
        return False
    groups = arch.heads_per_group
    uniform = arch.is_uniform and 0 not in groups[0]
    return not (uniform and arch.num_kv_heads(0) % tp == 0 and arch.ffn[0] % tp == 0)


class LayerPlacement:
    """One layer's share on one TP rank: its KV groups, query heads and FFN channels.

    Which rows and columns of each weight that share is follows from the weight's axes
    (`pap.params.held_indices`).
    """

    def __init__(self, arch: Arch, layer: int, tp: int, rank: int):
        counts = arch.heads_per_group[layer]
        self.groups = split_groups(counts, tp)[rank]
        """Indices of this rank's KV groups, in order."""
        self.heads_per_group = [counts[g] for g in self.groups]
        self.channels = split_channels(arch.ffn[layer], tp)[rank]
        first_head = [sum(counts[:g]) for g in range(len(counts))]
        self.heads = [h for g in self.groups for h in range(first_head[g], first_head[g] + counts[g])]
        """Global indices of this rank's query heads, in the order its shard holds them."""

    @property
    def num_heads(self) -> int:
        return sum(self.heads_per_group)


class Placements:
    """`LayerPlacement`s of one `Arch` at one TP size, computed once per (layer, rank)."""

    def __init__(self, arch: Arch, tp: int):
        self.arch, self.tp = arch, tp
        self._cache = {}

    def __call__(self, layer: int, rank: int) -> LayerPlacement:
        key = (layer, rank)
        if key not in self._cache:
            self._cache[key] = LayerPlacement(self.arch, layer, self.tp, rank)
        return self._cache[key]
