"""A pruning round carried out where the data lives: local cuts and a small exchange.

Every rank cuts its own shards; nothing is gathered. For each parameter the round works in
two stages, inside `Trainer.rebuild` (which builds megatron's objects for the new `Arch`
without drawing weights):

1. **Weights** (after the new model stage is built, before DDP wraps it). Each TP rank
   holds its whole shard of every weight (DP replicas hold the same), so its new shard
   comes from its old one, cut locally, plus the rows the balanced placement of the new
   `Arch` moves in from a neighbouring TP rank (`pap.sharding.shard_map`).
2. **Optimizer state** (after the new optimizer is built): fp32 masters (where they are
   not the weights themselves) and Adam's moments. With the plain optimizer they cover the
   whole TP shard and move like the weights. With the distributed optimizer each DP rank
   holds one flat range of the shard; the new ranges are megatron's own for the new shapes,
   so an element changes owner only where a range boundary shifted past it or its row moved
   to another TP rank. Each rank learns every range (two integers per parameter and rank)
   and sends exactly the elements whose owner changed.

Elements that stay on their rank are copied in place; the rest travel in one
`all_to_all` per stage, on the training device. What a rank sends is proportional to what
the round removes (and to the rows the rebalancing moves), never to the model. Surviving
values are copied, never recomputed, so masters and moments are bit-identical to before
the round; the weights are the old weights, which are the masters' cast.

The gather-and-rebuild path (`pap.sharding.reshard.gather_and_rebuild`) does the same
through full tensors; it stays as the oracle the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from pap.arch import Arch
from pap.pruning.select import Removal
from pap.sharding.full_state import collective_device, full_shape
from pap.sharding.shard_map import Placements, ShardMap
from pap.sharding.training_state import MOMENTS, TrainingState


@dataclass
class RoundStats:
    """What one round moved, on this rank."""

    bytes_sent: int = 0
    """Bytes this rank sent to other ranks (weights and optimizer state)."""
    bytes_copied: int = 0
    """Bytes this rank copied locally from its old tensors into the new ones."""


@dataclass
class _OldRecord:
    """One parameter's state before the round: references to the old tensors, nothing copied."""

    name: str
    full_shape: Tuple[int, ...]
    param: torch.Tensor
    fields: Dict[str, torch.Tensor] = field(default_factory=dict)
    """Optimizer-state fields (master where separate, moments), flat over `span`."""
    span: Tuple[int, int] = (0, 0)


class _Exchange:
    """Values bound for other ranks of one process group, sent in one all_to_all.

    Senders queue values per destination; receivers register, per source, how many values
    they expect and where they go. Both sides walk parameters and fields in the same order
    and list each parameter's elements in increasing flat position, so the streams line up.
    """

    def __init__(self, group, size: int, me: int):
        self.group, self.size, self.me = group, size, me
        self.outgoing: List[List[torch.Tensor]] = [[] for _ in range(size)]
        self.incoming: List[List[Tuple[int, Callable[[torch.Tensor], None]]]] = [[] for _ in range(size)]

    def send(self, rank: int, values: torch.Tensor) -> None:
        if values.numel():
            self.outgoing[rank].append(values.reshape(-1).to(torch.float32))

    def expect(self, rank: int, count: int, place: Callable[[torch.Tensor], None]) -> None:
        if count:
            self.incoming[rank].append((count, place))

    def run(self) -> int:
        """Do the exchange (collective over the group); returns the bytes this rank sent."""
        if self.size == 1:
            return 0
        device = collective_device()
        send_counts = [sum(v.numel() for v in values) for values in self.outgoing]
        receive_counts = [sum(count for count, _ in expected) for expected in self.incoming]
        parts = [v for values in self.outgoing for v in values]
        send = torch.cat(parts).to(device) if parts else torch.empty(0, device=device)
        received = torch.empty(sum(receive_counts), dtype=torch.float32, device=device)
        dist.all_to_all_single(received, send, receive_counts, send_counts, group=self.group)
        offset = 0
        for expected in self.incoming:
            for count, place in expected:
                place(received[offset:offset + count])
                offset += count
        return 4 * sum(send_counts)


class LocalRound:
    """Carry one round's removals from the old training state into megatron's rebuilt objects.

    Created before the rebuild (it takes references to the old state and drops the old
    gradient buffers); `Trainer.rebuild` calls `weights(module)` once the new model stage
    exists and `optimizer_state(module, optimizer)` once the new optimizer does.
    """

    def __init__(self, module, optimizer, old_arch: Arch, new_arch: Arch, removals: Sequence[Removal]):
        from megatron.core import parallel_state as ps

        self.old_arch, self.new_arch, self.removals = old_arch, new_arch, list(removals)
        self.tp = ps.get_tensor_model_parallel_world_size()
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.stats = RoundStats()
        state = TrainingState(module, optimizer)
        self.distributed = state.distributed
        self.step = state.step()
        self.old: Dict[str, _OldRecord] = {}
        for record in state.records:
            param = record.param
            old = _OldRecord(record.name, tuple(full_shape(param)), param.detach())
            if record.master is not None:
                if not record.shares_storage:
                    old.fields["master"] = record.master.detach().reshape(-1)
                adam = record.inner.state.get(record.master, {})
                for moment in MOMENTS:
                    if moment in adam:
                        old.fields[moment] = adam[moment].detach().reshape(-1)
            old.span = record.span if record.span is not None else (0, param.numel())
            if record.master is None and self.distributed:
                old.span = (0, 0)
            self.old[record.name] = old
            # The old gradient buffers are not needed: drop the views that keep them alive.
            for attribute in ("main_grad", "grad"):
                if getattr(param, attribute, None) is not None:
                    setattr(param, attribute, None)
        before, after = Placements(old_arch, self.tp), Placements(new_arch, self.tp)
        self.maps = {name: ShardMap(name, old.full_shape, before, after, self.removals)
                     for name, old in self.old.items()}
        if self.distributed:
            self._group_ranks()
            self.old_spans = self._all_spans([self.old[name].span for name in self.old])

    # ---- stage 1: weights ---------------------------------------------------------------------
    @torch.no_grad()
    def weights(self, module) -> None:
        """Fill the new model stage's weights from the old ones (collective over TP)."""
        from megatron.core import parallel_state as ps

        exchange = _Exchange(ps.get_tensor_model_parallel_group(), self.tp, self.tp_rank)
        for record in TrainingState(module).records:
            old = self.old[record.name]
            target = record.param.detach().view(-1)
            self._move(self.maps[record.name], [(old.param.reshape(-1), target)], (0, old.param.numel()),
                       (0, target.numel()), exchange)
            old.param = None  # the old weight's memory can go once nothing else holds it
        self.stats.bytes_sent += exchange.run()

    # ---- stage 2: optimizer state -----------------------------------------------------------------
    @torch.no_grad()
    def optimizer_state(self, module, optimizer) -> None:
        """Fill the new optimizer's masters and Adam moments, and its step (collective)."""
        from megatron.core import parallel_state as ps

        state = TrainingState(module, optimizer)
        if self.distributed:
            group, size, me = ps.get_tensor_and_data_parallel_group(), self.group_size, self.group_rank
            new_spans = self._all_spans([r.span if r.master is not None else (0, 0) for r in state.records])
        else:
            group, size, me = ps.get_tensor_model_parallel_group(), self.tp, self.tp_rank
            new_spans = None
        exchange = _Exchange(group, size, me)
        any_moments = self.step > 0  # Adam creates its moments at the first step; agreed by all ranks
        for index, record in enumerate(state.records):
            old = self.old[record.name]
            span = record.span if record.span is not None else (0, record.param.numel())
            if record.master is None and self.distributed:
                span = (0, 0)
            targets = {}
            if not record.shares_storage and record.master is not None:
                targets["master"] = record.master.detach().view(-1)
            if any_moments and record.master is not None:
                adam = record.adam()
                for moment in MOMENTS:
                    adam[moment] = torch.zeros(record.master.shape, dtype=torch.float32,
                                               device=record.master.device)
                    targets[moment] = adam[moment].view(-1)
            pairs = [(old.fields.get(name), targets.get(name)) for name in ("master",) + MOMENTS
                     if name in targets or name in old.fields]
            self._move(self.maps[record.name], pairs, old.span, span, exchange, spans=(index, new_spans))
            old.fields = {}
        self.stats.bytes_sent += exchange.run()
        state.set_step(self.step)

    # ---- the element moves ----------------------------------------------------------------
    def _move(self, shard_map: ShardMap, pairs, old_span: Tuple[int, int], new_span: Tuple[int, int],
              exchange: _Exchange, spans=None) -> None:
        """For each (source, target) of one parameter: copy what stays on this rank from
        `source` (old flat values over `old_span` of this TP rank's old shard) into `target`
        (new flat values over `new_span` of its new shard), queue what leaves, and register
        what arrives. `spans` (optimizer state only) selects the distributed optimizer's
        ranges for ownership; without it, a TP rank owns its whole shard."""
        me = exchange.me
        ranged = spans is not None and self.distributed
        if not ranged:
            self._move_whole_shards(shard_map, pairs, exchange)
            return
        receiving = [(s, t) for s, t in pairs if t is not None] if new_span[1] > new_span[0] else []
        sending = [(s, t) for s, t in pairs if s is not None] if old_span[1] > old_span[0] else []
        if shard_map.unchanged(self.tp_rank):
            # Same shard, element for element: only the distributed optimizer's ranges moved.
            low, high = max(old_span[0], new_span[0]), min(old_span[1], new_span[1])
            for source, target in receiving:
                if high > low:
                    target[low - new_span[0]:high - new_span[0]].copy_(source[low - old_span[0]:high - old_span[0]])
                    self.stats.bytes_copied += (high - low) * target.element_size()
            if not ranged:
                return
            receiving = [(s, t) for s, t in receiving if (new_span[0], new_span[1]) != (low, high)]
            holes = [(new_span[0], min(low, new_span[1]) if high > low else new_span[1]),
                     (max(high, new_span[0]), new_span[1])] if high > low else [new_span]
            for start, end in holes:
                if end > start:
                    grid = shard_map.sources(self.tp_rank, start, end)
                    self._receive(grid, [(s, t[start - new_span[0]:end - new_span[0]]) for s, t in receiving],
                                  old_span, exchange, spans, skip_local=True)
            pieces = [(old_span[0], min(old_span[1], new_span[0])), (max(old_span[0], new_span[1]), old_span[1])]
            for start, end in pieces:
                if end > start:
                    grid = shard_map.destinations(self.tp_rank, start, end)
                    self._send(grid, [(s[start - old_span[0]:end - old_span[0]], t) for s, t in sending],
                               exchange, spans)
            return
        if receiving:
            self._receive(shard_map.sources(self.tp_rank, *new_span), receiving, old_span, exchange, spans)
        if sending and (ranged or not shard_map.stays(self.tp_rank)):
            self._send(shard_map.destinations(self.tp_rank, *old_span), sending, exchange, spans)

    def _move_whole_shards(self, shard_map: ShardMap, pairs, exchange: _Exchange) -> None:
        """`_move` where every TP rank holds its whole shard (weights; the plain optimizer's
        state): runs of rows and columns copied as blocks, whole rows or columns sent."""
        t = self.tp_rank
        old_shape, new_shape = shard_map.local_shape("old", t), shard_map.local_shape("new", t)
        if shard_map.unchanged(t):
            for source, target in pairs:
                target.copy_(source)
                self.stats.bytes_copied += target.numel() * target.element_size()
            return
        (owner0, rows), (owner1, columns) = shard_map.receive_axes(t)
        axis = shard_map.dim
        owner = owner0 if axis == 0 else owner1
        local = None if owner is None else owner == t
        for source, target in pairs:
            src, dst = source.view(old_shape), target.view(new_shape)
            keep_rows, keep_columns = (rows, columns)
            places = [torch.arange(new_shape[0]), torch.arange(new_shape[1])]
            if local is not None and not bool(local.all()):
                keep = [keep_rows, keep_columns]
                keep[axis] = keep[axis][local]
                places[axis] = places[axis][local]
                keep_rows, keep_columns = keep
            _copy_blocks(src, dst, keep_rows, keep_columns, *places)
            self.stats.bytes_copied += len(keep_rows) * len(keep_columns) * target.element_size()
            if local is not None:
                for rank in torch.unique(owner[~local]).tolist():
                    where = (owner == rank).nonzero().reshape(-1)
                    exchange.expect(rank, len(where) * new_shape[1 - axis], _block_placer(dst, axis, where))
        (owner0, rows), (owner1, columns) = shard_map.send_axes(t)
        owner, index = (owner0, rows) if axis == 0 else (owner1, columns)
        if owner is None:
            return
        moving = (owner != t) & (index >= 0)
        if not bool(moving.any()):
            return
        other = columns if axis == 0 else rows
        other = (other >= 0).nonzero().reshape(-1)  # surviving indices of the other axis, in order
        for rank in torch.unique(owner[moving]).tolist():
            chosen = ((owner == rank) & (index >= 0)).nonzero().reshape(-1)
            chosen = chosen[torch.argsort(index[chosen])]
            for source, _ in pairs:
                src = source.view(old_shape)
                block = src.index_select(axis, chosen).index_select(1 - axis, other)
                exchange.send(rank, block.contiguous())

    def _receive(self, grid, pairs, old_span, exchange: _Exchange, spans, skip_local: bool = False) -> None:
        me = exchange.me
        owners = self._owners(grid, "old", spans)
        index = grid.flat if old_span[0] == 0 else grid.flat - old_span[0]
        if isinstance(owners, int):
            for source, target in pairs:
                if owners == me:
                    target.copy_(source[index].to(target.dtype))
                    self.stats.bytes_copied += target.numel() * target.element_size()
                else:
                    exchange.expect(owners, target.numel(), _placer(target, None))
            return
        local = owners == me
        others = torch.unique(owners[~local]).tolist()
        wheres = {rank: (owners == rank).nonzero().reshape(-1) for rank in others}
        for source, target in pairs:
            if bool(local.any()) and not skip_local:
                target[local] = source[index[local]].to(target.dtype)
                self.stats.bytes_copied += int(local.sum()) * target.element_size()
            for rank in others:
                exchange.expect(rank, wheres[rank].numel(), _placer(target, wheres[rank]))

    def _send(self, grid, pairs, exchange: _Exchange, spans) -> None:
        me = exchange.me
        owners = self._owners(grid, "new", spans)
        kept = grid.flat >= 0
        if isinstance(owners, int):
            if owners != me:
                for source, _ in pairs:
                    exchange.send(owners, source[kept])
            return
        for rank in torch.unique(owners[kept]).tolist():
            if rank != me:
                mask = kept & (owners == rank)
                for source, _ in pairs:
                    exchange.send(rank, source[mask])

    def _owners(self, grid, side: str, spans):
        """The exchange-group rank holding each element of `grid` (an int when they all agree)."""
        if spans is None or not self.distributed:  # whole shards: the same DP rank's TP peer
            return grid.single if grid.single is not None else grid.tp_rank
        return self._owner(grid.tp_rank_of(), grid.flat, side, spans)

    # ---- distributed optimizer ranges ------------------------------------------------------------
    def _group_ranks(self) -> None:
        """Each rank of the TP x DP group's (tp rank, dp rank), and the group's rank of each pair."""
        from megatron.core import parallel_state as ps

        group = ps.get_tensor_and_data_parallel_group()
        self.group_size = dist.get_world_size(group)
        self.group_rank = dist.get_rank(group)
        mine = torch.tensor([self.tp_rank, ps.get_data_parallel_rank()], dtype=torch.long,
                            device=collective_device())
        everyone = [torch.empty_like(mine) for _ in range(self.group_size)]
        dist.all_gather(everyone, mine, group=group)
        self.dp = ps.get_data_parallel_world_size()
        self.rank_of = torch.empty(self.tp, self.dp, dtype=torch.long)
        for rank, pair in enumerate(everyone):
            self.rank_of[int(pair[0]), int(pair[1])] = rank

    def _all_spans(self, spans: List[Tuple[int, int]]) -> torch.Tensor:
        """[tp, dp, param, 2]: every rank's (start, end) range of every parameter of this stage."""
        from megatron.core import parallel_state as ps

        mine = torch.tensor(spans, dtype=torch.long, device=collective_device()).reshape(-1, 2)
        everyone = [torch.empty_like(mine) for _ in range(self.group_size)]
        dist.all_gather(everyone, mine, group=ps.get_tensor_and_data_parallel_group())
        table = torch.empty(self.tp, self.dp, len(spans), 2, dtype=torch.long)
        for u in range(self.tp):
            for d in range(self.dp):
                table[u, d] = everyone[int(self.rank_of[u, d])].cpu()
        return table

    def _owner(self, tp_rank: torch.Tensor, flat: torch.Tensor, side: str, spans) -> torch.Tensor:
        """Group rank owning each element (TP rank, flat position in its shard) under the
        distributed optimizer's old or new ranges."""
        index, new_spans = spans
        table = (self.old_spans if side == "old" else new_spans)[:, :, index]  # [tp, dp, 2]
        owners = torch.empty_like(flat)
        for u in torch.unique(tp_rank).tolist():
            mask = tp_rank == u
            starts, ends = table[u, :, 0], table[u, :, 1]
            nonempty = (ends > starts).nonzero().reshape(-1)
            order = nonempty[torch.argsort(starts[nonempty])]
            slot = torch.bucketize(flat[mask], starts[order], right=True) - 1
            owners[mask] = self.rank_of[u, order[slot]]
        return owners


def _runs(source: torch.Tensor, target: torch.Tensor):
    """(target start, source start, length) of the maximal runs where both index vectors step by one."""
    if len(source) == 0:
        return []
    breaks = ((source[1:] - source[:-1] != 1) | (target[1:] - target[:-1] != 1)).nonzero().reshape(-1) + 1
    starts = [0] + breaks.tolist()
    ends = breaks.tolist() + [len(source)]
    return [(int(target[a]), int(source[a]), b - a) for a, b in zip(starts, ends)]


_MAX_BLOCKS = 64
"""Beyond this many blocks (a round with many removals), one indexed copy is faster."""


def _copy_blocks(src: torch.Tensor, dst: torch.Tensor, rows, columns, row_places, column_places) -> None:
    """dst[row_places][:, column_places] = src[rows][:, columns], as block copies of the runs."""
    row_runs, column_runs = _runs(rows, row_places), _runs(columns, column_places)
    if len(row_runs) * len(column_runs) > _MAX_BLOCKS:
        block = src.index_select(0, rows).index_select(1, columns)
        dst.index_put_((row_places[:, None], column_places[None, :]), block.to(dst.dtype))
        return
    for to_row, from_row, n_rows in row_runs:
        for to_column, from_column, n_columns in column_runs:
            dst[to_row:to_row + n_rows, to_column:to_column + n_columns].copy_(
                src[from_row:from_row + n_rows, from_column:from_column + n_columns])


def _block_placer(dst: torch.Tensor, axis: int, where: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """Received whole rows (axis 0) or columns (axis 1) of `dst`, at indices `where`, row-major."""
    def place(values: torch.Tensor) -> None:
        shape = (len(where), dst.shape[1]) if axis == 0 else (dst.shape[0], len(where))
        dst.index_copy_(axis, where.to(dst.device), values.to(dst.device, dst.dtype).view(shape))
    return place


def _placer(target: torch.Tensor, where: Optional[torch.Tensor]) -> Callable[[torch.Tensor], None]:
    """Where received values go: `target[where]`, or all of `target`."""
    def place(values: torch.Tensor) -> None:
        values = values.to(target.device, target.dtype)
        if where is None:
            target.copy_(values)
        else:
            target[where] = values
    return place
