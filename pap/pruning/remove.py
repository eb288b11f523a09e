"""Which slices of which tensors a removal takes away, on full (TP=1) tensors.

`prune_tensor(name, tensor, arch, removal)` works for any tensor shaped like the named
parameter: the weight itself, its gradient, Adam's moments, an fp32 main copy, a Fisher
buffer. Names are megatron's global ones (`decoder.layers.<global index>.…`, local spec).
"""

from __future__ import annotations

import bisect
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pap.arch import Arch
from pap.cluster_attention import qkv_row_indices
from pap.pruning.select import Removal, head_group, remove_from_arch

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_HIDDEN_ROWS = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")
_HIDDEN_COLUMNS = ("self_attention.linear_qkv.weight", "mlp.linear_fc1.weight")


def _without(tensor: torch.Tensor, dim: int, drop) -> torch.Tensor:
    """`tensor` without the `drop` indices along `dim`, as one copy of the kept runs.

    A removal drops a few contiguous runs (a head's rows, a channel), so concatenating the
    runs in between is one pass over memory; `index_select` along a non-leading dimension
    is several times slower on CPU.
    """
    runs, start = [], 0
    for index in sorted(set(drop)):
        if index > start:
            runs.append(tensor.narrow(dim, start, index - start))
        start = index + 1
    if start < tensor.shape[dim]:
        runs.append(tensor.narrow(dim, start, tensor.shape[dim] - start))
    return torch.cat(runs, dim=dim) if runs else tensor.narrow(dim, 0, 0).clone()


def _qkv_rows_of_head(heads_per_group, head: int, head_dim: int):
    """Rows of `linear_qkv` that go with query head `head` (its K/V rows if it is the last of its group)."""
    q_rows, _, _ = qkv_row_indices(heads_per_group)
    units = [q_rows[head]]
    group = head_group(heads_per_group, head)
    if heads_per_group[group] == 1:
        start = sum(n + 2 for n in heads_per_group[:group] if n > 0)
        units += [start + 1, start + 2]  # k_g and v_g follow the group's single query head
    return [u * head_dim + r for u in units for r in range(head_dim)]


def removed_slices(name: str, dims: int, arch: Arch, removal: Removal) -> Optional[Tuple[int, Sequence[int]]]:
    """(dim, indices) that `removal` takes from a full tensor shaped like parameter `name` under
    `arch` (`dims` is its number of dimensions), or None when it leaves the tensor whole."""
    match = _LAYER.match(name)
    layer, leaf = (int(match.group(1)), match.group(2)) if match else (None, name)
    d = arch.head_dim
    if removal.kind == "attn":
        if layer is None:
            return None
        head = removal.layer_index(layer)
        if head is None:
            return None
        if leaf == "self_attention.linear_qkv.weight":
            return 0, _qkv_rows_of_head(arch.heads_per_group[layer], head, d)
        if leaf == "self_attention.linear_proj.weight":
            return 1, range(head * d, (head + 1) * d)
        return None
    if removal.kind == "ffn":
        if layer is None:
            return None
        channel = removal.layer_index(layer)
        if channel is None:
            return None
        if leaf == "mlp.linear_fc1.weight":
            return 0, (channel, arch.ffn[layer] + channel)
        if leaf == "mlp.linear_fc2.weight":
            return 1, (channel,)
        return None
    (channel,) = removal.indices
    if name in ("embedding.word_embeddings.weight", "output_layer.weight") or leaf in _HIDDEN_COLUMNS:
        return 1, (channel,)
    if leaf in _HIDDEN_ROWS or dims == 1:  # the two row-parallel outputs, and every norm
        return 0, (channel,)
    raise ValueError(f"no stem rule for {name}")


def prune_tensor(name: str, tensor: torch.Tensor, arch: Arch, removal: Removal) -> torch.Tensor:
    """`tensor` (shaped like parameter `name` under `arch`) with `removal`'s slices taken out."""
    cut = removed_slices(name, tensor.dim(), arch, removal)
    return tensor if cut is None else _without(tensor, *cut)


def kept_indices(name: str, shape: Sequence[int], arch: Arch,
                 removals: Sequence[Removal]) -> List[Optional[torch.Tensor]]:
    """Per dimension of parameter `name` (full `shape` under `arch`): the indices that survive
    `removals` applied in order, as positions in the original tensor (new index i holds old
    index kept[i]); None where nothing along that dimension is removed."""
    removed: List[Optional[List[int]]] = [None] * len(shape)  # sorted original positions, per dim
    match = _LAYER.match(name)
    layer = int(match.group(1)) if match else None
    for removal, before in zip(removals, arch_chain(arch, removals)):
        # Cheap skip first: a head or channel removal leaves other layers' tensors (and the
        # stem's) whole, and an adaptive increment is thousands of one-layer removals.
        if removal.kind != "stem" and (layer is None or removal.indices[layer] < 0):
            continue
        cut = removed_slices(name, len(shape), before, removal)
        if cut is not None:
            dim, drop = cut
            gone = removed[dim] if removed[dim] is not None else []
            # Map the drop's positions (in the tensor as the earlier removals left it) to
            # original positions before recording any of them, then record them.
            for original in [_original_position(gone, position) for position in sorted(set(drop))]:
                bisect.insort(gone, original)
            removed[dim] = gone
    kept: List[Optional[torch.Tensor]] = [None] * len(shape)
    for dim, gone in enumerate(removed):
        if gone is not None:
            mask = torch.ones(shape[dim], dtype=torch.bool)
            mask[torch.as_tensor(gone, dtype=torch.long)] = False
            kept[dim] = torch.nonzero(mask).view(-1)
    return kept


def _original_position(removed: List[int], position: int) -> int:
    """The original index of the survivor at `position`, given the sorted originals removed:
    the fixed point of o = position + #(removed <= o)."""
    original = position + bisect.bisect_right(removed, position)
    while True:
        again = position + bisect.bisect_right(removed, original)
        if again == original:
            return original
        original = again


_last_chain: Tuple[Optional[Arch], Tuple[Removal, ...], List[Arch]] = (None, (), [])


def arch_chain(arch: Arch, removals: Sequence[Removal]) -> List[Arch]:
    """The `Arch` right before each of `removals` (applied in order from `arch`).

    A round asks for it once per tensor with the same removals; an adaptive increment is
    ~14,000 one-layer removals at SmolLM-1.7B, so the last chain is kept and reused
    (`bench/increment_bookkeeping.py`).
    """
    global _last_chain
    cached_arch, cached_removals, chain = _last_chain
    if cached_arch is arch and len(cached_removals) == len(removals) \
            and all(a is b for a, b in zip(cached_removals, removals)):
        return chain
    chain = []
    for removal in removals:
        chain.append(arch)
        arch = remove_from_arch(arch, removal)
    _last_chain = (chain[0] if chain else None, tuple(removals), chain)
    return chain


def prune_state(full: Dict[str, torch.Tensor], arch: Arch, removal: Removal) -> Dict[str, torch.Tensor]:
    """Every tensor of a full state dict with `removal` applied."""
    return {name: prune_tensor(name, tensor, arch, removal) for name, tensor in full.items()}
