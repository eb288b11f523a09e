"""A rank's share of a parameter as boxes of the full (TP=1) tensor, for sharded checkpoints.

A rank holds a TP shard of each parameter (for `tp_dim(name)`, the full-tensor indices
`shard_rows(...)`, uneven once pruning has run) and, for optimizer state under the
distributed optimizer, one flat range of that shard. Written as-is, that is not one
rectangle of the full tensor: the flat range starts and ends inside rows, and a shard's
indices can be several runs (`linear_fc1` is [gate block; up block]). `boxes` cuts it
into the few rectangles that are: at most three row pieces (a partial first row, the
whole rows, a partial last row) times the runs of consecutive full-tensor indices. Each
`Box` says where it sits in the full tensor (for `dist_checkpointing`'s global offsets)
and where its elements are in the rank's flat piece (a strided view, no index tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

from pap.sharding.shard_map import Placements, shard_rows, tp_dim


@dataclass(frozen=True)
class Box:
    """One rectangle of the full tensor held by this rank."""

    offset: Tuple[int, ...]
    """Position of its first element in the full tensor."""
    shape: Tuple[int, ...]
    start: int
    """Flat position of its first element in the rank's flat piece."""
    rows: int
    columns: int
    stride: int
    """Columns of the rank's local shard (the flat distance between its rows)."""

    def view(self, flat: torch.Tensor) -> torch.Tensor:
        """The box's elements as a view of the rank's flat piece, shaped like `shape`."""
        block = strided(flat, self.start, self.rows, self.columns, self.stride)
        return block if len(self.shape) == 2 else block.view(self.shape)  # a norm weight: (n, 1) -> (n,)


def strided(flat: torch.Tensor, start: int, rows: int, columns: int, stride: int) -> torch.Tensor:
    """The (rows, columns) block of a flat tensor whose rows start `stride` apart from `start`."""
    return flat.as_strided((rows, columns), (stride, 1), flat.storage_offset() + start)


def _runs(indices: torch.Tensor, low: int, high: int) -> List[Tuple[int, int]]:
    """(first local position, length) of the runs of consecutive values in indices[low:high]."""
    if high <= low:
        return []
    piece = indices[low:high]
    breaks = ((piece[1:] - piece[:-1]) != 1).nonzero().reshape(-1) + 1
    starts = [0] + breaks.tolist()
    ends = breaks.tolist() + [len(piece)]
    return [(low + a, b - a) for a, b in zip(starts, ends)]


def boxes(name: str, full_shape: Sequence[int], placements: Placements, tp_rank: int,
          span: Tuple[int, int]) -> List[Box]:
    """The boxes of the full tensor `name` (shape `full_shape`) that flat range `span` of TP
    rank `tp_rank`'s shard covers, in flat order. `placements` is the `Arch`'s at the run's TP."""
    two_d = list(full_shape) + [1] * (2 - len(full_shape))
    dim = tp_dim(name) if placements.tp > 1 else None
    indices = [torch.arange(n) for n in two_d]
    if dim is not None:
        indices[dim] = shard_rows(name, two_d[dim], placements, tp_rank)
    rows, columns = len(indices[0]), len(indices[1])
    start, end = span
    if end <= start or columns == 0:
        return []
    first, last = divmod(start, columns), divmod(end, columns)
    pieces = []  # (row from, row to, column from, column to) of the local shard
    if first[0] == last[0]:
        pieces.append((first[0], first[0] + 1, first[1], last[1]))
    else:
        whole_from = first[0]
        if first[1]:
            pieces.append((first[0], first[0] + 1, first[1], columns))
            whole_from += 1
        if last[0] > whole_from:
            pieces.append((whole_from, last[0], 0, columns))
        if last[1]:
            pieces.append((last[0], last[0] + 1, 0, last[1]))
    out = []
    for row_from, row_to, column_from, column_to in pieces:
        for row, row_count in _runs(indices[0], row_from, row_to):
            for column, column_count in _runs(indices[1], column_from, column_to):
                offset = (int(indices[0][row]), int(indices[1][column]))
                shape = (row_count, column_count)
                if len(full_shape) == 1:
                    offset, shape = offset[:1], shape[:1]
                out.append(Box(offset, shape, row * columns + column - start, row_count, column_count, columns))
    return out
