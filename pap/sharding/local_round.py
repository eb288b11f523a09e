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
from pap.pruning.round_plan import RoundPlan
from pap.sharding.boxes import strided
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

    Created before the rebuild from the old objects' `TrainingState` (it takes references to
    the old state, not the state object, and drops the old gradient buffers); the rebuild
    (`pap.sharding.reshard.Rebuild`) calls `weights(module)` once the new model stage
    exists, `stash_masters(module)` once DDP wraps it and `optimizer_state(module, optimizer)`
    once the new optimizer does.
    """

    def __init__(self, state: TrainingState, plan: RoundPlan):
        from megatron.core import parallel_state as ps  # megatron-core: heavy, and needs its parallel state

        self.old_arch, self.new_arch, self.removals = plan.start, plan.end, plan.removals
        self.tp = ps.get_tensor_model_parallel_world_size()
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.stats = RoundStats()
        self.stashed = set()  # parameters whose new masters wait in the DDP gradient buffer
        self.distributed = state.distributed
        self.step = state.step()
        self.old: Dict[str, _OldRecord] = {}
        for record in state.records:
            param = record.param
            old = _OldRecord(record.name, tuple(full_shape(param)), param.detach(), state.state_fields(record),
                             state.owned_span(record))
            self.old[record.name] = old
            # The old gradient buffers are not needed: drop the views that keep them alive.
            for attribute in ("main_grad", "grad"):
                if getattr(param, attribute, None) is not None:
                    setattr(param, attribute, None)
        before, after = Placements(self.old_arch, self.tp), Placements(self.new_arch, self.tp)
        chain = plan.archs_before()
        self.maps = {name: ShardMap(name, old.full_shape, before, after, self.removals, chain)
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

    # ---- stage 1b: masters, parked in the new gradient buffer --------------------------------------
    @torch.no_grad()
    def stash_masters(self, module) -> None:
        """Plain optimizer with separate fp32 masters (bf16 runs): cut the old masters straight
        into the new DDP gradient buffer (fp32, the new shapes, unused until the next step
        zeroes it) and let them go, so that megatron's new optimizer does not allocate its
        masters while the old ones are still alive (the round's memory peak).
        `optimizer_state` takes them from there. Collective over TP; DDP must exist."""
        from megatron.core import parallel_state as ps

        if self.distributed:
            return  # the distributed optimizer's state is sharded: its peak is small already
        exchange = _Exchange(ps.get_tensor_model_parallel_group(), self.tp, self.tp_rank)
        for record in TrainingState(module).records:
            old = self.old[record.name]
            master = old.fields.pop("master", None)
            if master is None:
                continue
            target = TrainingState.parking_space(record)
            self._move(self.maps[record.name], [(master, target)], (0, master.numel()), (0, target.numel()),
                       exchange)
            self.stashed.add(record.name)
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
            span = state.owned_span(record)
            # Every element of the targets is filled below from a surviving one: no zero fill.
            targets = state.state_targets(record, with_moments=any_moments)
            if record.name in self.stashed:
                targets.pop("master")
                self.stats.bytes_copied += state.take_parked_master(record)
            pairs = [(old.fields.get(name), targets.get(name)) for name in ("master",) + MOMENTS
                     if name in targets or name in old.fields]
            self._move(self.maps[record.name], pairs, old.span, span, exchange, spans=(index, new_spans))
            old.fields = {}
        self.stats.bytes_sent += exchange.run()
        state.set_step(self.step)

    # ---- the moves --------------------------------------------------------------------------
    def _move(self, shard_map: ShardMap, pairs, old_span: Tuple[int, int], new_span: Tuple[int, int],
              exchange: _Exchange, spans=None) -> None:
        """For each (source, target) of one parameter: copy what stays on this rank from
        `source` (old flat values over `old_span` of this TP rank's old shard) into `target`
        (new flat values over `new_span` of its new shard), queue what leaves, and register
        what arrives. `spans` (optimizer state only) selects the distributed optimizer's
        ranges for ownership; without it, a TP rank owns its whole shard."""
        t, me = self.tp_rank, exchange.me
        ranged = spans is not None and self.distributed
        old_owner = self._owner_function("old", spans) if ranged else _whole_shard_owner
        new_owner = self._owner_function("new", spans) if ranged else _whole_shard_owner
        # A rank may hold a field on one side only (a distributed optimizer range that is
        # empty before or after the round): it then only receives, or only sends.
        receiving = [(s, t_) for s, t_ in pairs if t_ is not None]
        sending = [(s, t_) for s, t_ in pairs if s is not None]
        if new_span[1] > new_span[0] and receiving:
            width = shard_map.local_shape("new", t)[1]
            plan = _plan(shard_map.source_rects(t), new_span, width, old_owner, me, with_local=True)
            for source, target in receiving:
                if source is not None:  # without an old range, nothing stays local
                    self.stats.bytes_copied += plan.copy_local(source, old_span[0], target, new_span[0], width)
                for rank, (here, _) in plan.remote.items():
                    exchange.expect(rank, here.numel(), _placer(target, here - new_span[0]))
        if old_span[1] > old_span[0] and sending:
            width = shard_map.local_shape("old", t)[1]
            plan = _plan(shard_map.destination_rects(t), old_span, width, new_owner, me, with_local=False)
            for rank, (here, _) in plan.remote.items():
                for source, _ in sending:
                    exchange.send(rank, source[here - old_span[0]])

    def _owner_function(self, side: str, spans):
        """owner(tp_rank, flat positions) -> group ranks, under the distributed optimizer's
        `side` ('old' or 'new') ranges of the parameter `spans` names."""
        index, new_spans = spans
        table = (self.old_spans if side == "old" else new_spans)[:, :, index]  # [tp, dp, 2]

        def owner(tp_rank: int, flat: torch.Tensor) -> torch.Tensor:
            starts, ends = table[tp_rank, :, 0], table[tp_rank, :, 1]
            nonempty = (ends > starts).nonzero().reshape(-1)
            order = nonempty[torch.argsort(starts[nonempty])]
            slot = torch.bucketize(flat, starts[order], right=True) - 1
            return self.rank_of[tp_rank, order[slot]]
        return owner

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


def _runs(source: torch.Tensor, target: torch.Tensor):
    """(target start, source start, length) of the maximal runs where both index vectors step by one."""
    if len(source) == 0:
        return []
    breaks = ((source[1:] - source[:-1] != 1) | (target[1:] - target[:-1] != 1)).nonzero().reshape(-1) + 1
    starts = [0] + breaks.tolist()
    ends = breaks.tolist() + [len(source)]
    return [(int(target[a]), int(source[a]), b - a) for a, b in zip(starts, ends)]


def _whole_shard_owner(tp_rank: int, flat: torch.Tensor) -> torch.Tensor:
    """Where every TP rank holds its whole shard, the TP group's rank `tp_rank` owns it all."""
    return torch.full_like(flat, tp_rank)


_MAX_COLUMN_RUNS = 8
"""Beyond this many column runs (a round with many removals), one indexed copy per row run."""


@dataclass
class _Plan:
    """One parameter's elements on one side of the round, sorted by where they go.

    `local`: (rect, first row's flat position, peer flat of its first element, row count)
    for runs of whole rows of a rect that stay on this rank; `local_elements`: (here, there)
    flat positions of the other elements that stay; `remote`: per group rank on the other
    side, (here, there) flat positions, increasing.
    """

    local: List[Tuple[object, int, int, int]]
    local_elements: Tuple[torch.Tensor, torch.Tensor]
    remote: Dict[int, Tuple[torch.Tensor, torch.Tensor]]

    def copy_local(self, source: torch.Tensor, source_start: int, target: torch.Tensor, target_start: int,
                   width: int) -> int:
        """target[here] = source[there] for every element that stays; returns bytes copied.
        `source` and `target` are flat over ranges starting at `source_start`/`target_start`."""
        copied = 0
        for rect, row_flat, peer_flat, count in self.local:
            runs = _runs(rect.offsets, rect.columns)
            if len(runs) <= _MAX_COLUMN_RUNS:
                for column, offset, length in runs:
                    strided(target, row_flat + column - target_start, count, length, width).copy_(
                        strided(source, peer_flat + offset - source_start, count, length, rect.peer_width))
            else:
                first, last = int(rect.columns[0]), int(rect.columns[-1])
                low, high = int(rect.offsets[0]), int(rect.offsets[-1])
                into = strided(target, row_flat + first - target_start, count, last - first + 1, width)
                out = strided(source, peer_flat + low - source_start, count, high - low + 1, rect.peer_width)
                into[:, rect.columns - first] = out[:, rect.offsets - low].to(target.dtype)
            copied += count * len(rect.columns) * target.element_size()
        here, there = self.local_elements
        if here.numel():
            target[here - target_start] = source[there - source_start].to(target.dtype)
            copied += here.numel() * target.element_size()
        return copied


def _plan(rects, span: Tuple[int, int], width: int, owner, me: int, with_local: bool) -> _Plan:
    """Sort the elements of flat range `span` of a local shard `width` columns wide, given as
    `rects`, by the group rank that holds them on the other side (`owner(peer, flat)`).

    Whole rows whose first and last element have one owner go as a unit (an owner range
    is contiguous in flat order); only the rest are listed element by element: partial
    rows at the ends of `span`, rows that straddle an owner boundary, and rows that
    leave this rank, all proportional to what the round moves."""
    low, high = span
    local: List[Tuple[object, int, int, int]] = []
    pieces: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for rect in rects:
        if not len(rect.rows) or not len(rect.columns):
            continue
        first_column, last_column = int(rect.columns[0]), int(rect.columns[-1])
        row_flat = rect.rows * width
        touching = (row_flat + last_column >= low) & (row_flat + first_column < high)
        whole = touching & (row_flat + first_column >= low) & (row_flat + last_column < high)
        rows = whole.nonzero().reshape(-1)
        start_owner = owner(rect.peer, rect.bases[rows] + rect.offsets[0])
        end_owner = owner(rect.peer, rect.bases[rows] + rect.offsets[-1])
        staying = (start_owner == me) & (end_owner == me)
        if with_local:
            for row, base, count in _row_runs(rect.rows[rows[staying]], rect.bases[rows[staying]],
                                              rect.peer_width):
                local.append((rect, row * width, base, count))
        listed = torch.cat([(touching & ~whole).nonzero().reshape(-1), rows[~staying]])
        if listed.numel():
            here = (row_flat[listed][:, None] + rect.columns[None, :]).reshape(-1)
            there = (rect.bases[listed][:, None] + rect.offsets[None, :]).reshape(-1)
            inside = (here >= low) & (here < high)
            here, there = here[inside], there[inside]
            pieces.append((here, there, owner(rect.peer, there)))
    empty = torch.empty(0, dtype=torch.long)
    if not pieces:
        return _Plan(local, (empty, empty), {})
    here, there, owners = (torch.cat(parts) for parts in zip(*pieces))
    order = torch.argsort(here)
    here, there, owners = here[order], there[order], owners[order]
    stays = owners == me
    remote = {rank: (here[owners == rank], there[owners == rank]) for rank in torch.unique(owners[~stays]).tolist()}
    return _Plan(local, (here[stays], there[stays]) if with_local else (empty, empty), remote)


def _row_runs(rows: torch.Tensor, bases: torch.Tensor, peer_width: int):
    """(first row, its peer base, count) of the maximal runs of consecutive rows whose peer
    rows are consecutive too (bases `peer_width` apart)."""
    if not len(rows):
        return []
    breaks = ((rows[1:] - rows[:-1] != 1) | (bases[1:] - bases[:-1] != peer_width)).nonzero().reshape(-1) + 1
    starts = [0] + breaks.tolist()
    ends = breaks.tolist() + [len(rows)]
    return [(int(rows[a]), int(bases[a]), b - a) for a, b in zip(starts, ends)]


def _placer(target: torch.Tensor, where: Optional[torch.Tensor]) -> Callable[[torch.Tensor], None]:
    """Where received values go: `target[where]`, or all of `target`."""
    def place(values: torch.Tensor) -> None:
        values = values.to(target.device, target.dtype)
        if where is None:
            target.copy_(values)
        else:
            target[where] = values
    return place
