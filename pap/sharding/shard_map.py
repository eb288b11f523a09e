"""Where every element of a parameter goes in a pruning round, computed locally on each rank.

A round takes a parameter from its shape under the old `Arch` to its shape under the new
one. In full (TP=1) coordinates that is one list of surviving indices per dimension
(`pap.pruning.remove.kept_indices`). Under TP, rank `u` holds the full-tensor indices
`rows(u)` along the sharded dimension (`pap.sharding.layout`: contiguous and balanced, a
pure function of the `Arch`), so each element's old and new owner and local position
follow without any communication. A head or FFN channel leaves its rank's shard; when the
balanced placement of the new `Arch` moves a boundary group or channel to the
neighbouring rank, those rows are the only ones that travel.

`ShardMap` works at row and column granularity (vectors as long as the tensor's
dimensions) and expands to elements only for the flat ranges a caller asks about, so
its cost is a few integer passes over the elements a rank holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from pap.arch import Arch
from pap.pruning.remove import kept_indices
from pap.pruning.select import Removal
from pap.sharding.full_state import EMBEDDING, TIED_OUTPUT
from pap.sharding.layout import LayerPlacement

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_DECODER_SHARDS = {
    "self_attention.linear_qkv.weight": (0, "qkv_rows"),
    "self_attention.linear_proj.weight": (1, "proj_columns"),
    "mlp.linear_fc1.weight": (0, "fc1_rows"),
    "mlp.linear_fc2.weight": (1, "fc2_columns"),
}


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


def tp_dim(name: str) -> Optional[int]:
    """The dimension megatron splits over TP ranks for parameter `name`, or None (replicated)."""
    if name in (EMBEDDING, TIED_OUTPUT):
        return 0  # vocabulary-parallel
    match = _LAYER.match(name)
    if match and match.group(2) in _DECODER_SHARDS:
        return _DECODER_SHARDS[match.group(2)][0]
    return None


def shard_rows(name: str, full_size: int, placements: Placements, rank: int) -> torch.Tensor:
    """Full-tensor indices along `tp_dim(name)` that TP rank `rank` holds, in its local order.

    The same indices megatron's even split gives where the shape divides (contiguous
    blocks; `linear_fc1` as [gate block; up block]), and pap's placement where it does not.
    """
    tp = placements.tp
    if tp == 1:
        return torch.arange(full_size)
    match = _LAYER.match(name)
    if match:
        attribute = _DECODER_SHARDS[match.group(2)][1]
        return getattr(placements(int(match.group(1)), rank), attribute)
    per_rank = full_size // tp  # the vocabulary is padded to a multiple of TP
    return torch.arange(rank * per_rank, (rank + 1) * per_rank)


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


def _row_range(start: int, end: int, columns: int) -> Tuple[int, int]:
    """The rows [first, last) of a (rows, columns) tensor that flat range [start, end) touches."""
    if end <= start or columns == 0:
        return 0, 0
    return start // columns, (end - 1) // columns + 1


@dataclass
class Grid:
    """Per-element facts for one flat range of a local shard: the TP rank on the other side
    of the round and the flat position there (-1 where the element is removed).

    `single` is that TP rank when every element of the range shares it (the usual case:
    nothing crosses ranks), and `tp_rank` is then None.
    """

    flat: torch.Tensor
    single: Optional[int]
    tp_rank: Optional[torch.Tensor]

    def tp_rank_of(self, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.single is not None:
            count = self.flat.numel() if mask is None else int(mask.sum())
            return torch.full((count,), self.single, dtype=torch.long)
        return self.tp_rank if mask is None else self.tp_rank[mask]


class ShardMap:
    """How one parameter's TP shards map from the old `Arch` to the new one.

    Tensors are treated as 2-D `(rows, columns)`; a 1-D norm weight is `(n, 1)`.
    """

    def __init__(self, name: str, old_shape: Sequence[int], old: Placements, new: Placements,
                 removals: Sequence[Removal]):
        self.name = name
        shape = list(old_shape) + [1] * (2 - len(old_shape))
        tp = old.tp
        kept = kept_indices(name, old_shape, old.arch, removals) + [None] * (2 - len(old_shape))
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

    # ---- facts at row granularity ---------------------------------------------------------------
    def unchanged(self, rank: int) -> bool:
        """True when TP rank `rank`'s new shard is its old shard, element for element."""
        same_rows = self.dim is None or torch.equal(self.old_rows[rank], self.new_rows[rank])
        return same_rows and all(len(k) == n for k, n in zip(self.kept, self.old_shape))

    def stays(self, rank: int) -> bool:
        """True when every surviving row or column of TP rank `rank`'s old shard stays on it."""
        if self.dim is None:
            return True
        new_global = self.inverse[self.dim][self.old_rows[rank]]
        new_global = new_global[new_global >= 0]
        return bool((self.new_owner[new_global] == rank).all())

    def receive_axes(self, rank: int):
        """For TP rank `rank`'s new shard, per axis: (old TP rank of each new index or None when
        all are `rank`'s own, old local index of each new index)."""
        axes = []
        for axis in range(2):
            if axis != self.dim:
                axes.append((None, self.kept[axis]))
                continue
            old_global = self.kept[axis][self.new_rows[rank]]
            axes.append((self.old_owner[old_global], self.old_position[old_global]))
        return axes

    def send_axes(self, rank: int):
        """For TP rank `rank`'s old shard, per axis: (new TP rank of each old index or None when
        all stay, new local index of each old index or -1 where removed)."""
        axes = []
        for axis in range(2):
            if axis != self.dim:
                axes.append((None, self.inverse[axis]))
                continue
            new_global = self.inverse[axis][self.old_rows[rank]]
            alive = new_global >= 0
            owner = torch.where(alive, self.new_owner[new_global.clamp(min=0)], rank)
            axes.append((owner, torch.where(alive, self.new_position[new_global.clamp(min=0)], -1)))
        return axes

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

    # ---- element maps ------------------------------------------------------------------------
    def sources(self, rank: int, start: int, end: int) -> Grid:
        """For the elements [start, end) of TP rank `rank`'s *new* flat shard: the old TP rank
        holding each and its flat position in that rank's old shard."""
        rows, columns = self.local_shape("new", rank)
        first, last = _row_range(start, end, columns)
        i = torch.arange(first, last)
        j = torch.arange(columns)
        d = self.dim
        if d is None:
            tp_rank = torch.full((1, 1), rank, dtype=torch.long)
            flat = self.kept[0][i][:, None] * self.old_shape[1] + self.kept[1][None, :]
        elif d == 0:
            old_row = self.kept[0][self.new_rows[rank][i]]
            tp_rank = self.old_owner[old_row][:, None]
            flat = self.old_position[old_row][:, None] * self.old_shape[1] + self.kept[1][None, :]
        else:
            old_column = self.kept[1][self.new_rows[rank][j]]
            tp_rank = self.old_owner[old_column][None, :]
            widths = torch.tensor([len(r) for r in self.old_rows])
            flat = self.kept[0][i][:, None] * widths[tp_rank] + self.old_position[old_column][None, :]
        return self._slice(tp_rank, flat, first * columns, start, end)

    def destinations(self, rank: int, start: int, end: int) -> Grid:
        """For the elements [start, end) of TP rank `rank`'s *old* flat shard: the new TP rank
        each goes to and its flat position there, or flat -1 where it is removed."""
        rows, columns = self.local_shape("old", rank)
        first, last = _row_range(start, end, columns)
        i = torch.arange(first, last)
        j = torch.arange(columns)
        d = self.dim
        if d is None:
            tp_rank = torch.full((1, 1), rank, dtype=torch.long)
            new_row, new_column = self.inverse[0][i][:, None], self.inverse[1][None, :]
            flat = new_row * self.new_shape[1] + new_column
        elif d == 0:
            new_global = self.inverse[0][self.old_rows[rank][i]]
            tp_rank = torch.where(new_global >= 0, self.new_owner[new_global.clamp(min=0)], rank)[:, None]
            new_row = torch.where(new_global >= 0, self.new_position[new_global.clamp(min=0)], -1)[:, None]
            new_column = self.inverse[1][None, :]
            flat = new_row * self.new_shape[1] + new_column
        else:
            new_global = self.inverse[1][self.old_rows[rank][j]]
            tp_rank = torch.where(new_global >= 0, self.new_owner[new_global.clamp(min=0)], rank)[None, :]
            new_column = torch.where(new_global >= 0, self.new_position[new_global.clamp(min=0)], -1)[None, :]
            new_row = self.inverse[0][i][:, None]
            widths = torch.tensor([len(r) for r in self.new_rows])
            flat = new_row * widths[tp_rank.clamp(min=0)] + new_column
        removed = (new_row < 0) | (new_column < 0)
        flat = torch.where(removed, -1, flat)
        return self._slice(tp_rank, flat, first * columns, start, end)

    @staticmethod
    def _slice(tp_rank: torch.Tensor, flat: torch.Tensor, offset: int, start: int, end: int) -> Grid:
        """Broadcast the row/column facts of a (rows, columns) block to its elements and keep
        the flat range [start, end) of the shard (the block starts at flat `offset`)."""
        window = slice(start - offset, end - offset)
        values = tp_rank.reshape(-1)
        if values.numel() == 1 or bool((values == values[0]).all()):
            return Grid(flat=flat.reshape(-1)[window], single=int(values[0]) if values.numel() else 0,
                        tp_rank=None)
        spread = torch.broadcast_to(tp_rank, flat.shape).reshape(-1)[window]
        return Grid(flat=flat.reshape(-1)[window], single=None, tp_rank=spread)
