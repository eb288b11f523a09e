"""Which slices of which tensors a removal takes away, on full (TP=1) tensors.

`prune_tensor(name, tensor, arch, removal)` works for any tensor shaped like the named
parameter: the weight itself, its gradient, Adam's moments, an fp32 main copy, a Fisher
buffer. Names are megatron's global ones (`decoder.layers.<global index>.…`, local spec);
what a removal takes from each is `pap.params`'s table.
"""

from __future__ import annotations

import bisect
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pap import params
from pap.arch import Arch
from pap.pruning.select import Removal, remove_from_arch


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


def removed_slices(name: str, dims: int, arch: Arch, removal: Removal) -> Optional[Tuple[int, Sequence[int]]]:
    """(dim, indices) that `removal` takes from a full tensor shaped like parameter `name` under
    `arch` (`dims` is its number of dimensions), or None when it leaves the tensor whole."""
    weight, layer = params.lookup(name)
    if dims != len(weight.axes):
        raise ValueError(f"{name} has {len(weight.axes)} dimensions, not {dims}")
    return weight.removed(arch, layer, removal)


def prune_tensor(name: str, tensor: torch.Tensor, arch: Arch, removal: Removal) -> torch.Tensor:
    """`tensor` (shaped like parameter `name` under `arch`) with `removal`'s slices taken out."""
    cut = removed_slices(name, tensor.dim(), arch, removal)
    return tensor if cut is None else _without(tensor, *cut)


def kept_indices(name: str, shape: Sequence[int], arch: Arch, removals: Sequence[Removal],
                 chain: Optional[Sequence[Arch]] = None) -> List[Optional[torch.Tensor]]:
    """Per dimension of parameter `name` (full `shape` under `arch`): the indices that survive
    `removals` applied in order, as positions in the original tensor (new index i holds old
    index kept[i]); None where nothing along that dimension is removed. `chain`: the `Arch`
    right before each removal, when the caller has it (a round's plan)."""
    removed: List[Optional[List[int]]] = [None] * len(shape)  # sorted original positions, per dim
    _, layer = params.lookup(name)
    for removal, before in zip(removals, chain if chain is not None else arch_chain(arch, removals)):
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


def arch_chain(arch: Arch, removals: Sequence[Removal]) -> List[Arch]:
    """The `Arch` right before each of `removals` (applied in order from `arch`).

    A round has it already (`pap.pruning.round_plan.RoundPlan.archs_before`): pass it to
    `kept_indices` rather than recomputing it per tensor (an adaptive increment is ~14,000
    one-layer removals at SmolLM-1.7B, `bench/increment_bookkeeping.py`).
    """
    chain = []
    for removal in removals:
        chain.append(arch)
        arch = remove_from_arch(arch, removal)
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
