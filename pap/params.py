"""What every weight of pap's GPT is: one table, by global name.

A weight's dimensions are each indexed by one kind of thing, its *axes*: the hidden
channels, the vocabulary, the FFN channels, the query heads' columns, the rows of the
fused QKV projection, the [gate; up] rows of the SwiGLU input projection. Everything pap
needs to know about a weight follows from its axes (`WEIGHTS`):

* its full (TP=1) shape under an `Arch`: each axis's length;
* the dimension tensor parallelism splits: the one along an axis megatron splits (the
  hidden axis never is), and which indices each TP rank holds there: that axis's
  rows for the rank's KV groups, FFN channels or vocabulary block (which groups and
  channels: `pap.sharding.layout`). `held_indices` is the one source of it: the local
  round, the checkpoints' boxes, the Hessians' columns and the tag on each built weight
  (`param.pap_shard`, read by `pap.sharding.full_state`) all come from it;
* what each kind of removal takes: `attn` (one query head of a layer) cuts the axes
  indexed by query heads, `ffn` (one FFN channel) those indexed by FFN channels, `stem`
  (one hidden channel) the hidden axis of every weight.

Names are megatron's global ones: `decoder.layers.<index over the whole model>.<leaf>`
for a transformer layer's weights, the local layers' names for the norms that Transformer
Engine fuses into the linear layer after them (`parse_layer_name`, `global_name`).
`lookup(name)` gives a weight's row of the table; `tp_dim`, `full_shape`, `held_indices`,
`shard` and `Weight.removed` are what follows from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import torch

from pap.arch import Arch

EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT_LAYER = "output_layer.weight"
FINAL_NORM = "decoder.final_layernorm.weight"

_LAYER_NAME = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def parse_layer_name(name: str) -> Optional[Tuple[int, str]]:
    """'decoder.layers.3.mlp.linear_fc2.weight' -> (3, 'mlp.linear_fc2.weight'); None for a
    name outside the transformer layers (embedding, output layer, final norm)."""
    match = _LAYER_NAME.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def layer_name(layer: int, leaf: str) -> str:
    """The name of weight `leaf` of transformer layer `layer`."""
    return f"decoder.layers.{layer}.{leaf}"


class LayerShare(Protocol):
    """One layer's share on one TP rank (`pap.sharding.layout.LayerPlacement`)."""

    groups: List[int]
    """Its KV groups, in order."""
    heads: List[int]
    """Its query heads, in order."""
    channels: range
    """Its FFN channels."""


class Placements(Protocol):
    """Every layer's share on every TP rank for one `Arch` at one TP size
    (`pap.sharding.layout.Placements`): where TP puts the heads and channels, which this
    table turns into rows and columns of each weight."""

    arch: Arch
    tp: int

    def __call__(self, layer: int, rank: int) -> LayerShare:
        ...


# ---- axes ------------------------------------------------------------------------------------


class Axis:
    """What indexes one dimension of a weight: its length, which indices a TP rank holds
    along it, and which indices a removal takes from it."""

    split_by_tp = False
    """Whether megatron's tensor parallelism splits a weight along this axis."""
    cut_by: Optional[str] = None
    """The removal kind (`attn`, `ffn`, `stem`) that takes indices from this axis."""

    def size(self, arch: Arch, layer: Optional[int]) -> int:
        """Length along this axis in layer `layer` (None outside the layers) under `arch`."""
        raise NotImplementedError

    def held(self, placements: Placements, layer: Optional[int], rank: int) -> torch.Tensor:
        """Indices along this axis TP rank `rank` holds, in its shard's order (`split_by_tp` axes)."""
        raise NotImplementedError

    def removed(self, arch: Arch, layer: Optional[int], removal) -> Optional[Sequence[int]]:
        """Indices a `cut_by` removal takes along this axis under `arch` (before it), or None
        when it leaves this layer whole."""
        raise NotImplementedError


class Hidden(Axis):
    """The hidden channels (the residual stream): replicated over TP; a stem removal takes one."""

    cut_by = "stem"

    def size(self, arch, layer):
        return arch.hidden_size

    def removed(self, arch, layer, removal):
        (channel,) = removal.indices
        return (channel,)


class Vocabulary(Axis):
    """The padded vocabulary: vocabulary-parallel (one contiguous block per TP rank; the
    padding makes it a multiple of any TP size); never pruned."""

    split_by_tp = True

    def size(self, arch, layer):
        return arch.padded_vocab_size

    def held(self, placements, layer, rank):
        per_rank = placements.arch.padded_vocab_size // placements.tp
        return torch.arange(rank * per_rank, (rank + 1) * per_rank)


def _rows_of_units(units: Sequence[int], width: int) -> torch.Tensor:
    """The rows of `width`-row units `units`, unit by unit."""
    return (torch.tensor(units, dtype=torch.long)[:, None] * width + torch.arange(width)).reshape(-1)


def _qkv_blocks(heads_per_group: Sequence[int]):
    """(group, first query head, first head unit) of each KV group that still serves a query
    head, in row order. megatron interleaves `linear_qkv`'s rows per group: the group's query
    heads, then its key head, then its value head, `head_dim` rows each (one head unit)."""
    blocks, head, unit = [], 0, 0
    for group, count in enumerate(heads_per_group):
        if count > 0:
            blocks.append((group, head, unit))
            unit += count + 2
        head += count
    return blocks


class QkvRows(Axis):
    """The rows of `linear_qkv` (column-parallel): per KV group, its query heads then its key
    and value head. TP splits it by whole KV groups, each rank's groups in order; an attn
    removal takes the query head's rows, and its group's key and value rows when it is the
    group's last query head."""

    split_by_tp = True
    cut_by = "attn"

    def size(self, arch, layer):
        return (arch.num_heads(layer) + 2 * arch.num_kv_heads(layer)) * arch.head_dim

    def held(self, placements, layer, rank):
        counts = placements.arch.heads_per_group[layer]
        first_unit = {group: unit for group, _, unit in _qkv_blocks(counts)}
        units = [unit for group in placements(layer, rank).groups
                 for unit in range(first_unit[group], first_unit[group] + counts[group] + 2)]
        return _rows_of_units(units, placements.arch.head_dim)

    def removed(self, arch, layer, removal):
        head = removal.layer_index(layer)
        if head is None:
            return None
        counts = arch.heads_per_group[layer]
        for group, first_head, unit in _qkv_blocks(counts):
            if first_head <= head < first_head + counts[group]:
                units = [unit + head - first_head]
                if counts[group] == 1:  # the group goes with its last query head
                    units += [unit + 1, unit + 2]
                d = arch.head_dim
                return [u * d + r for u in units for r in range(d)]
        raise IndexError(f"head {head} out of range for groups {counts}")


class QueryHeadColumns(Axis):
    """The input columns of `linear_proj` (row-parallel): `head_dim` per query head, heads in
    order. TP splits it like `QkvRows` (each rank: its groups' heads); an attn removal takes
    the head's columns."""

    split_by_tp = True
    cut_by = "attn"

    def size(self, arch, layer):
        return arch.num_heads(layer) * arch.head_dim

    def held(self, placements, layer, rank):
        return _rows_of_units(placements(layer, rank).heads, placements.arch.head_dim)

    def removed(self, arch, layer, removal):
        head = removal.layer_index(layer)
        if head is None:
            return None
        d = arch.head_dim
        return range(head * d, (head + 1) * d)


class GateUpRows(Axis):
    """The rows of SwiGLU's `linear_fc1` (column-parallel): every FFN channel's gate row, then
    every channel's up row. TP splits it by FFN channels, each rank holding [its gate rows;
    its up rows]; an ffn removal takes the channel's gate and up row."""

    split_by_tp = True
    cut_by = "ffn"

    def size(self, arch, layer):
        return 2 * arch.ffn[layer]

    def held(self, placements, layer, rank):
        channels = placements(layer, rank).channels
        gate = torch.arange(channels.start, channels.stop)
        return torch.cat([gate, gate + placements.arch.ffn[layer]])

    def removed(self, arch, layer, removal):
        channel = removal.layer_index(layer)
        return None if channel is None else (channel, arch.ffn[layer] + channel)


class FfnChannelColumns(Axis):
    """The input columns of `linear_fc2` (row-parallel): one per FFN channel. TP splits it by
    FFN channels like `GateUpRows`; an ffn removal takes the channel's column."""

    split_by_tp = True
    cut_by = "ffn"

    def size(self, arch, layer):
        return arch.ffn[layer]

    def held(self, placements, layer, rank):
        channels = placements(layer, rank).channels
        return torch.arange(channels.start, channels.stop)

    def removed(self, arch, layer, removal):
        channel = removal.layer_index(layer)
        return None if channel is None else (channel,)


HIDDEN, VOCABULARY = Hidden(), Vocabulary()
QKV_ROWS, QUERY_HEAD_COLUMNS = QkvRows(), QueryHeadColumns()
GATE_UP_ROWS, FFN_CHANNEL_COLUMNS = GateUpRows(), FfnChannelColumns()


# ---- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weight:
    """One weight of the model: its name and the axis of each of its dimensions."""

    name: str
    """Global name; in a transformer layer, the part after `decoder.layers.<index>.`."""
    axes: Tuple[Axis, ...]
    in_layer: bool
    fused_name: Optional[str] = None
    """Transformer Engine's name for this norm, fused into the linear layer after it."""

    @property
    def tp_dim(self) -> Optional[int]:
        """The dimension megatron splits over TP ranks, or None (replicated on every rank)."""
        return next((dim for dim, axis in enumerate(self.axes) if axis.split_by_tp), None)

    def removed(self, arch: Arch, layer: Optional[int], removal) -> Optional[Tuple[int, Sequence[int]]]:
        """(dim, indices) that `removal` takes from this weight in layer `layer` under `arch`
        (before it), or None when it leaves the weight whole."""
        for dim, axis in enumerate(self.axes):
            if axis.cut_by == removal.kind:
                indices = axis.removed(arch, layer, removal)
                return None if indices is None else (dim, indices)
        return None


WEIGHTS = (
    Weight(EMBEDDING, (VOCABULARY, HIDDEN), in_layer=False),
    Weight("input_layernorm.weight", (HIDDEN,), in_layer=True,
           fused_name="self_attention.linear_qkv.layer_norm_weight"),
    Weight("self_attention.linear_qkv.weight", (QKV_ROWS, HIDDEN), in_layer=True),
    Weight("self_attention.linear_proj.weight", (HIDDEN, QUERY_HEAD_COLUMNS), in_layer=True),
    Weight("pre_mlp_layernorm.weight", (HIDDEN,), in_layer=True, fused_name="mlp.linear_fc1.layer_norm_weight"),
    Weight("mlp.linear_fc1.weight", (GATE_UP_ROWS, HIDDEN), in_layer=True),
    Weight("mlp.linear_fc2.weight", (HIDDEN, FFN_CHANNEL_COLUMNS), in_layer=True),
    Weight(FINAL_NORM, (HIDDEN,), in_layer=False),
    Weight(OUTPUT_LAYER, (VOCABULARY, HIDDEN), in_layer=False),
)

_LAYER_WEIGHTS: Dict[str, Weight] = {w.name: w for w in WEIGHTS if w.in_layer}
_LAYER_WEIGHTS.update({w.fused_name: w for w in WEIGHTS if w.fused_name})
_OTHER_WEIGHTS: Dict[str, Weight] = {w.name: w for w in WEIGHTS if not w.in_layer}

FUSED_TO_LOCAL = {w.fused_name: w.name for w in WEIGHTS if w.fused_name}
"""Transformer Engine's names of the fused norms -> the local layers' names, which pap uses
everywhere it names tensors (checkpoints, pruning, initialisation), so that Transformer
Engine and local runs share checkpoints."""


@lru_cache(maxsize=4096)  # a round looks up the same few hundred names once per removal
def lookup(name: str) -> Tuple[Weight, Optional[int]]:
    """(the table's row for weight `name`, its layer; None outside the layers)."""
    parsed = parse_layer_name(name)
    weight = _LAYER_WEIGHTS.get(parsed[1]) if parsed else _OTHER_WEIGHTS.get(name)
    if weight is None:
        raise ValueError(f"{name} is not a weight of pap's GPT (pap.params.WEIGHTS)")
    return weight, parsed[0] if parsed else None


def global_name(model, local_name: str) -> str:
    """`decoder.layers.<local>.x` -> `decoder.layers.<global>.x` in a pipeline stage's
    `model` (its layer offset applied), with Transformer Engine's fused-norm names mapped
    to the local layers' (`FUSED_TO_LOCAL`)."""
    parsed = parse_layer_name(local_name)
    if parsed is None:
        return local_name
    local, leaf = parsed
    layer = model.decoder.layers[local]
    return layer_name(layer.layer_number - 1, FUSED_TO_LOCAL.get(leaf, leaf))


# ---- what follows from the table -------------------------------------------------------------


def tp_dim(name: str) -> Optional[int]:
    """The dimension megatron splits over TP ranks for weight `name`, or None (replicated)."""
    return lookup(name)[0].tp_dim


def full_shape(name: str, arch: Arch) -> Tuple[int, ...]:
    """Shape of weight `name` at TP=1 under `arch`."""
    weight, layer = lookup(name)
    return tuple(axis.size(arch, layer) for axis in weight.axes)


def held_indices(name: str, placements: Placements, tp_rank: int) -> Optional[torch.Tensor]:
    """Full-tensor indices along `tp_dim(name)` that TP rank `tp_rank` holds of weight
    `name`, in its shard's order (all of them at TP=1), under `placements` (an `Arch` at a
    TP size); None for a weight TP does not split.

    Where megatron's even split holds the shape these are its indices (contiguous blocks;
    `linear_fc1` as [gate block; up block]), and pap's balanced placement where it does not.
    """
    weight, layer = lookup(name)
    dim = weight.tp_dim
    if dim is None:
        return None
    axis = weight.axes[dim]
    if placements.tp == 1:
        return torch.arange(axis.size(placements.arch, layer))
    return axis.held(placements, layer, tp_rank)


@dataclass(frozen=True)
class Shard:
    """Where the TP shards of one weight sit in its full tensor (every rank computes the same)."""

    dim: int
    full_size: int
    """Length of the full tensor along `dim`."""
    rank_indices: Tuple[torch.Tensor, ...]
    """Per TP rank, the full-tensor indices along `dim` its shard holds, in the shard's order."""
    rank: int
    """This process's TP rank."""

    @property
    def indices(self) -> torch.Tensor:
        """The full-tensor indices along `dim` this rank's shard holds."""
        return self.rank_indices[self.rank]


def shard(name: str, placements: Placements, tp_rank: int) -> Optional[Shard]:
    """The TP shards of weight `name` under `placements`, seen from TP rank `tp_rank`; None
    when they are not split (a replicated weight, or TP=1)."""
    weight, layer = lookup(name)
    if weight.tp_dim is None or placements.tp == 1:
        return None
    ranks = tuple(held_indices(name, placements, rank) for rank in range(placements.tp))
    size = weight.axes[weight.tp_dim].size(placements.arch, layer)
    return Shard(weight.tp_dim, size, ranks, tp_rank)
