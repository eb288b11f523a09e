"""Apply a removal to a live, sharded training state: weights and Adam state.

Strategy: gather, prune, rebuild, scatter. Every rank gathers the full (TP=1) weights
and Adam moments of the model (one PP group's worth), cuts the removed slices out with
`pap.pruning.remove`, asks the trainer to rebuild megatron's model, DDP buffers and
optimizer for the new `Arch`, and scatters its shard of the pruned tensors back. The
result is physically smaller everywhere — parameters, gradient buffers, Adam moments —
and identical to a freshly built model of the new shape holding the surviving weights,
whatever the layout. Gathering costs one full copy of the model and its moments per
rank at each event; rebalancing comes free, since shards are re-cut from full tensors.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.distributed as dist

from pap.arch import Arch
from pap.pruning.remove import prune_state
from pap.pruning.select import Removal, remove_from_arch
from pap.sharding.distopt import gather_moment, owned_ranges, set_owned_state
from pap.sharding.full_state import gather_full_state, load_full_state

ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def _inner_optimizers(optimizer):
    return [chained.optimizer for chained in getattr(optimizer, "chained_optimizers", [optimizer])]


def _adam_state(optimizer) -> Dict[int, dict]:
    """id(param) -> torch Adam state, for megatron's (non-distributed) optimizer."""
    states = {}
    for inner in _inner_optimizers(optimizer):
        for group in inner.param_groups:
            for param in group["params"]:
                states[id(param)] = inner.state.get(param, {})
    return states


def _adam_step(optimizer) -> Optional[torch.Tensor]:
    for inner in _inner_optimizers(optimizer):
        for state in inner.state.values():
            if "step" in state:
                step = state["step"]
                return step.clone() if torch.is_tensor(step) else torch.tensor(float(step))
    return None


def _max_over_world(step: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    value = torch.tensor([-1.0 if step is None else float(step)], dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return None if value.item() < 0 else torch.tensor(float(value.item()))


def apply_removal(trainer, removal: Removal) -> Arch:
    """Remove `removal` from `trainer`'s model and optimizer on every rank; returns the new Arch.

    Works with megatron's plain optimizer (Adam state per model parameter) and with its
    distributed optimizer (Adam state per DP-owned range, gathered over DP here).
    """
    old_arch = trainer.arch
    module = trainer.model.module
    owned = owned_ranges(trainer.optimizer)
    states = _adam_state(trainer.optimizer)
    weights = gather_full_state(module, "param")
    moments = {}
    for moment in ADAM_MOMENTS:
        if owned is not None:
            def fetch(param, moment=moment):
                return gather_moment(owned, param, moment)
        else:
            def fetch(param, moment=moment):
                state = states.get(id(param), {})
                return state[moment] if moment in state else torch.zeros_like(param)

        moments[moment] = gather_full_state(module, fetch)
    step = _adam_step(trainer.optimizer)
    if owned is not None:  # every DP rank must agree on Adam's step count
        step = _max_over_world(step)
    new_arch = remove_from_arch(old_arch, removal)
    weights = prune_state(weights, old_arch, removal)
    moments = {m: prune_state(t, old_arch, removal) for m, t in moments.items()}

    trainer.rebuild(new_arch)
    new_module = trainer.model.module
    load_full_state(new_module, weights)
    new_owned = owned_ranges(trainer.optimizer)
    if new_owned is not None:
        local = {m: {} for m in ADAM_MOMENTS}
        for moment in ADAM_MOMENTS:
            def keep(param, full_local, moment=moment):
                local[moment][id(param)] = full_local

            load_full_state(new_module, moments[moment], assign=keep)
        for param in new_module.parameters():
            set_owned_state(new_owned, param, {m: local[m][id(param)] for m in ADAM_MOMENTS},
                            step if step is not None else torch.tensor(0.0))
    elif step is not None:
        new_states = {}
        for inner in _inner_optimizers(trainer.optimizer):
            for group in inner.param_groups:
                for param in group["params"]:
                    new_states[id(param)] = (inner, param)

        for moment in ADAM_MOMENTS:
            def assign(param, local, moment=moment):
                inner, key = new_states[id(param)]
                state = inner.state[key]
                state["step"] = step.clone()
                state[moment] = local.to(param.device, torch.float32).clone()

            load_full_state(new_module, moments[moment], assign=assign)
    return new_arch
