"""Apply removals to a live, sharded training state: weights and Adam state.

Strategy: gather, prune, rebuild, scatter. Every rank gathers the full (TP=1) weights
and Adam moments of the model (one PP group's worth), cuts the removed slices out with
`pap.pruning.remove`, asks the trainer to rebuild megatron's model, DDP buffers and
optimizer for the new `Arch`, and scatters its shard of the pruned tensors back. The
result is physically smaller everywhere — parameters, gradient buffers, Adam moments —
and identical to a freshly built model of the new shape holding the surviving weights,
whatever the layout. Gathering costs one full copy of the model and its moments per
rank at each round; rebalancing comes free, since shards are re-cut from full tensors.
All removals of one pruning round share one gather and one rebuild.
"""

from __future__ import annotations

from typing import Sequence

from pap.arch import Arch
from pap.pruning.remove import prune_state
from pap.pruning.select import Removal, remove_from_arch
from pap.sharding.adam_state import adam_step, gather_adam, scatter_adam
from pap.sharding.full_state import gather_full_state, load_full_state


def apply_removals(trainer, removals: Sequence[Removal]) -> Arch:
    """Remove `removals` (in order) from `trainer`'s model and optimizer on every rank; returns the new Arch.

    Works with megatron's plain optimizer (Adam state per model parameter) and with its
    distributed optimizer (Adam state per DP-owned range, gathered over DP).
    """
    arch = trainer.arch
    module = trainer.model.module
    weights = gather_full_state(module, "param")
    moments = gather_adam(module, trainer.optimizer)
    step = adam_step(trainer.optimizer)
    for removal in removals:
        weights = prune_state(weights, arch, removal)
        moments = {m: prune_state(t, arch, removal) for m, t in moments.items()}
        arch = remove_from_arch(arch, removal)
    trainer.rebuild(arch)
    load_full_state(trainer.model.module, weights)
    scatter_adam(trainer.model.module, trainer.optimizer, moments, step)
    return arch


def apply_removal(trainer, removal: Removal) -> Arch:
    """`apply_removals` for a single removal."""
    return apply_removals(trainer, [removal])
