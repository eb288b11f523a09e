"""Apply a round's removals to a live, sharded training state: weights, fp32 masters, Adam state.

Two implementations with the same result:

* `apply_removals` (what training uses): `pap.sharding.local_round.LocalRound`. Every rank
  cuts its own shards in place and exchanges only the elements whose owner changes; the
  trainer rebuilds megatron's objects for the new `Arch` without drawing weights, and the
  round fills them.
* `gather_and_rebuild` (the oracle): every rank gathers the full (TP=1) fp32 masters and
  Adam moments of its PP group through `TrainingState`, cuts them with
  `pap.pruning.remove`, rebuilds, and writes its shard back. Simple and obviously right,
  but it moves and holds the whole model on every rank; tests compare the two bit for bit.

Either way the model is physically smaller everywhere and identical to a freshly built
model of the new shape holding the surviving training state: surviving masters and
moments are bit-identical to before the round, and the weights are their cast.
"""

from __future__ import annotations

from typing import Sequence

from pap.arch import Arch
from pap.pruning.remove import prune_state
from pap.pruning.select import Removal, remove_from_arch
from pap.sharding.training_state import OPTIMIZER_FIELDS, TrainingState


def new_arch(arch: Arch, removals: Sequence[Removal]) -> Arch:
    for removal in removals:
        arch = remove_from_arch(arch, removal)
    return arch


def apply_removals(trainer, removals: Sequence[Removal]) -> Arch:
    """Remove `removals` (in order) from `trainer`'s model and optimizer on every rank; returns
    the new Arch. Collective over the trainer's PP stage (TP and DP ranks). The round's
    traffic is left in `trainer.last_round` (`RoundStats`)."""
    from pap.sharding.local_round import LocalRound

    after = new_arch(trainer.arch, removals)
    trainer.sync_params()
    fill = LocalRound(trainer.model.module, trainer.optimizer, trainer.arch, after, removals)
    trainer.rebuild(after, fill=fill)
    trainer.last_round = fill.stats
    return after


def gather_and_rebuild(trainer, removals: Sequence[Removal]) -> Arch:
    """`apply_removals` through full tensors: the test oracle (collective over TP, DP and PP)."""
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
