"""Where every element of a parameter goes in a pruning round, computed locally on each rank.

A round takes a parameter from its shape under the old `Arch` to its shape under the new
one. In full (TP=1) coordinates that is one list of surviving indices per dimension
(`pap.pruning.remove.kept_indices`). Under TP, rank `u` holds the full-tensor indices
`rows(u)` along the sharded dimension (`pap.params.held_indices`: contiguous and
balanced, a pure function of the `Arch`), so each element's old and new owner and local position
follow without any communication. A head or FFN channel leaves its rank's shard; when the
balanced placement of the new `Arch` moves a boundary group or channel to the
neighbouring rank, those rows are the only ones that travel.

`ShardMap` works at row and column granularity (vectors as long as the tensor's
dimensions): it describes each side's shard as a few rectangular blocks (`Rect`) that
keep their shape through the round, so callers copy blocks and never build per-element
index tensors for what stays in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from pap import params
from pap.arch import Arch
from pap.pruning.remove import kept_indices
from pap.pruning.select import Removal
from pap.sharding.layout import Placements


def tp_dim(name: str) -> Optional[int]:
    """The dimension megatron splits over TP ranks for parameter `name`, or None (replicated)."""
    return params.tp_dim(name)


def shard_rows(name: str, full_size: int, placements: Placements, rank: int) -> torch.Tensor:
    """Full-tensor indices along `tp_dim(name)` that TP rank `rank` holds, in its local order
    (`pap.params.held_indices`); `full_size` is the full tensor's length along that dimension.

    The same indices megatron's even split gives where the shape divides (contiguous
    blocks; `linear_fc1` as [gate block; up block]), and pap's placement where it does not.
    """
    rows = params.held_indices(name, placements, rank)
    if rows is None:
        raise ValueError(f"{name} is not split over TP ranks")
    expected = params.full_shape(name, placements.arch)[params.tp_dim(name)]
    if full_size != expected:
        raise ValueError(f"{name} is {expected} long along its TP dimension under this Arch, not {full_size}")
    return rows


def _owners(rows: Sequence[torch.Tensor], size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each full index along the sharded dimension: the TP rank holding it and its local position."""
    owner = torch.full((size,), -1, dtype=torch.long)
    position = torch.full((size,), -1, dtype=torch.long)
    for rank, indices in enumerate(rows):
        owner[indices] = rank
        position[indices] = torch.arange(len(indices))
    return owner, position


def _inverse(kept: Optional[torch.Tensor], old_size: int) -> torch.Tensor:
    """Old full index -> new full index, -1 where removed."""
    if kept is None:
        return torch.arange(old_size)
    inverse = torch.full((old_size,), -1, dtype=torch.long)
    inverse[kept] = torch.arange(len(kept))
    return inverse


@dataclass
class Rect:
    """A block of one side's local shard whose elements all sit on one TP rank, `peer`, on
    the other side of the round, at flat positions `bases[k] + offsets[l]` there for the
    element at local row `rows[k]` and local column `columns[l]`.

    Every index vector is increasing, so the order of elements is the same on both sides.
    """

    peer: int
    rows: torch.Tensor
    bases: torch.Tensor
    columns: torch.Tensor
    offsets: torch.Tensor
    peer_width: int
    """Columns of the peer's local shard (the flat stride between its rows)."""


class ShardMap:
    """How one parameter's TP shards map from the old `Arch` to the new one.

    Tensors are treated as 2-D `(rows, columns)`; a 1-D norm weight is `(n, 1)`.
    """

    def __init__(self, name: str, old_shape: Sequence[int], old: Placements, new: Placements,
                 removals: Sequence[Removal], chain: Optional[Sequence[Arch]] = None):
        """`chain`: the `Arch` right before each removal (a round's plan has it)."""
        self.name = name
        shape = list(old_shape) + [1] * (2 - len(old_shape))
        tp = old.tp
        kept = kept_indices(name, old_shape, old.arch, removals, chain) + [None] * (2 - len(old_shape))
        self.old_shape = shape
        self.new_shape = [len(k) if k is not None else n for k, n in zip(kept, shape)]
        self.kept = [k if k is not None else torch.arange(n) for k, n in zip(kept, shape)]
        self.inverse = [_inverse(k, n) for k, n in zip(kept, shape)]
        self.tp = tp
        self.dim = tp_dim(name) if tp > 1 else None
        if self.dim is None:
            self.old_rows = self.new_rows = None
            return
        d = self.dim
        self.old_rows = [shard_rows(name, shape[d], old, u) for u in range(tp)]
        self.new_rows = [shard_rows(name, self.new_shape[d], new, u) for u in range(tp)]
        self.old_owner, self.old_position = _owners(self.old_rows, shape[d])
        self.new_owner, self.new_position = _owners(self.new_rows, self.new_shape[d])

    # ---- shapes -----------------------------------------------------------------------------
    def local_shape(self, which: str, rank: int) -> List[int]:
        """(rows, columns) of TP rank `rank`'s shard, `which` = 'old' or 'new'."""
        shape = list(self.old_shape if which == "old" else self.new_shape)
        if self.dim is not None:
            rows = self.old_rows if which == "old" else self.new_rows
            shape[self.dim] = len(rows[rank])
        return shape

    def numel(self, which: str, rank: int) -> int:
        rows, columns = self.local_shape(which, rank)
        return rows * columns

    # ---- block maps -----------------------------------------------------------------------
    def source_rects(self, rank: int) -> List[Rect]:
        """TP rank `rank`'s *new* shard as blocks, each with the old TP rank it comes from
        and its flat positions in that rank's old shard."""
        rows, columns = self.local_shape("new", rank)
        all_rows, all_columns = torch.arange(rows), torch.arange(columns)
        d, old_columns = self.dim, self.old_shape[1]
        if d is None:
            return [Rect(rank, all_rows, self.kept[0] * old_columns, all_columns, self.kept[1], old_columns)]
        old_global = self.kept[d][self.new_rows[rank]]
        owner, position = self.old_owner[old_global], self.old_position[old_global]
        rects = []
        for peer in torch.unique(owner).tolist():
            chosen = (owner == peer).nonzero().reshape(-1)
            if d == 0:
                rects.append(Rect(peer, chosen, position[chosen] * old_columns, all_columns, self.kept[1],
                                  old_columns))
            else:
                width = len(self.old_rows[peer])
                rects.append(Rect(peer, all_rows, self.kept[0] * width, chosen, position[chosen], width))
        return rects

    def destination_rects(self, rank: int) -> List[Rect]:
        """TP rank `rank`'s *old* shard, less what the round removes, as blocks, each with the
        new TP rank it goes to and its flat positions in that rank's new shard."""
        alive = [(inverse >= 0).nonzero().reshape(-1) for inverse in self.inverse]
        d, new_columns = self.dim, self.new_shape[1]
        if d is None:
            return [Rect(rank, alive[0], self.inverse[0][alive[0]] * new_columns, alive[1],
                         self.inverse[1][alive[1]], new_columns)]
        new_global = self.inverse[d][self.old_rows[rank]]
        survivors = (new_global >= 0).nonzero().reshape(-1)
        owner = self.new_owner[new_global[survivors]]
        position = self.new_position[new_global[survivors]]
        rects = []
        for peer in torch.unique(owner).tolist():
            chosen = owner == peer
            local, there = survivors[chosen], position[chosen]
            if d == 0:
                rects.append(Rect(peer, local, there * new_columns, alive[1], self.inverse[1][alive[1]],
                                  new_columns))
            else:
                width = len(self.new_rows[peer])
                rects.append(Rect(peer, alive[0], self.inverse[0][alive[0]] * width, local, there, width))
        return rects
