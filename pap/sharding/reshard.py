"""Apply removals to a live, sharded training state: weights, fp32 masters and Adam state.

Strategy: gather, prune, rebuild, scatter. Every rank gathers the full (TP=1) fp32 master
weights and Adam moments of its PP group through `TrainingState`, cuts the removed slices
out with `pap.pruning.remove`, asks the trainer to free the old model, DDP buffers and
optimizer and build them for the new `Arch`, and writes its shard of the pruned tensors
back (masters, moments, Adam's step; the model params become the masters' cast). The
result is physically smaller everywhere and identical to a freshly built model of the
new shape holding the surviving training state, whatever the layout and dtype: surviving
master weights and moments are bit-identical to before the round. Gathering costs one
full copy of the model's masters and moments per rank at each round; rebalancing comes
free, since shards are re-cut from full tensors. All removals of one round share one
gather and one rebuild.
"""

from __future__ import annotations

from typing import Sequence

from pap.arch import Arch
from pap.pruning.remove import prune_state
from pap.pruning.select import Removal, remove_from_arch
from pap.sharding.training_state import OPTIMIZER_FIELDS, TrainingState


def apply_removals(trainer, removals: Sequence[Removal]) -> Arch:
    """Remove `removals` (in order) from `trainer`'s model and optimizer on every rank; returns the new Arch.

    Works with megatron's plain optimizers (fp32, or bf16 with fp32 masters) and with its
    distributed optimizer (state per DP-owned range, assembled over DP).
    """
    arch = trainer.arch
    state = TrainingState(trainer.model.module, trainer.optimizer)
    full = state.gather(OPTIMIZER_FIELDS, copy=False)  # read once, before anything changes them
    step = state.step()
    del state  # holds the old model and optimizer, which the rebuild frees
    for removal in removals:
        full = {field: prune_state(tensors, arch, removal) for field, tensors in full.items()}
        arch = remove_from_arch(arch, removal)
    trainer.rebuild(arch)
    TrainingState(trainer.model.module, trainer.optimizer).write(full, step)
    return arch


def apply_removal(trainer, removal: Removal) -> Arch:
    """`apply_removals` for a single removal."""
    return apply_removals(trainer, [removal])
