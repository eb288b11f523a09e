"""Carry out a round's plan on a live, sharded training state: weights, fp32 masters, Adam state.

The executor takes everything it works on as arguments: the DDP-wrapped model stage, the
optimizer, their `TrainingState`, the round's `RoundPlan` (`pap.pruning.round_plan`) and a
`rebuild(arch, fill)` callable that builds megatron's objects (model stage, DDP, optimizer)
for a new `Arch` and returns them. It returns the new objects; it keeps nothing.

Two implementations with the same result:

* `execute_round` (what training uses): `pap.sharding.local_round.LocalRound`. Every rank
  cuts its own shards in place and exchanges only the elements whose owner changes; the
  rebuild builds megatron's objects for the new `Arch` without drawing weights, and the
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

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

from pap.arch import Arch
from pap.pruning.remove import prune_state
from pap.pruning.round_plan import RoundPlan
from pap.sharding.local_round import LocalRound, RoundStats
from pap.sharding.training_state import OPTIMIZER_FIELDS, TrainingState

Rebuild = Callable[[Arch, Optional[Any]], Tuple[Any, Any]]
"""rebuild(arch, fill) -> (DDP-wrapped model stage, optimizer) for `arch`. `fill` (or None:
weights left as allocated) is called back at the rebuild's three points: `fill.weights(module)`
once the new model stage exists, `fill.stash_masters(module)` once DDP has wrapped it, and
`fill.optimizer_state(module, optimizer)` once the optimizer exists. The old objects must
be released first (the round holds only what it still needs of them)."""


@dataclass
class RoundResult:
    """The objects a round leaves, replacing the ones it was given."""

    model: Any
    optimizer: Any
    arch: Arch
    stats: RoundStats


def execute_round(model, optimizer, state: TrainingState, plan: RoundPlan, rebuild: Rebuild) -> RoundResult:
    """Remove `plan`'s removals (in order) from the DDP-wrapped `model` stage and `optimizer`
    on every rank. `state` is their `TrainingState`; params must be current (with
    `parallel.overlap_param_gather`, synchronised by the caller). Collective over the PP
    stage's TP and DP ranks. `model`, `optimizer` and `state` must not be used afterwards."""
    fill = LocalRound(state, plan)
    del state, model, optimizer  # the round keeps only what it needs of the old objects
    new_model, new_optimizer = rebuild(plan.end, fill)
    return RoundResult(new_model, new_optimizer, plan.end, fill.stats)


def gather_and_rebuild(model, optimizer, state: TrainingState, plan: RoundPlan, rebuild: Rebuild) -> RoundResult:
    """`execute_round` through full tensors: the test oracle (collective over TP, DP and PP)."""
    full = state.gather(OPTIMIZER_FIELDS, copy=False)  # read once, before anything changes them
    step = state.step()
    del state, model, optimizer  # the rebuild frees the old objects
    for removal, arch in zip(plan.removals, plan.archs_before()):
        full = {field: prune_state(tensors, arch, removal) for field, tensors in full.items()}
    new_model, new_optimizer = rebuild(plan.end, None)
    TrainingState(new_model.module, new_optimizer).write(full, step)
    return RoundResult(new_model, new_optimizer, plan.end, RoundStats())
