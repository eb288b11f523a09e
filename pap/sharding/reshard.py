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

from typing import Dict

import torch

from pap.arch import Arch
from pap.errors import PapError
from pap.pruning.remove import prune_state
from pap.pruning.select import Removal, remove_from_arch
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


def apply_removal(trainer, removal: Removal) -> Arch:
    """Remove `removal` from `trainer`'s model and optimizer on every rank; returns the new Arch."""
    if trainer.cfg.parallel.distributed_optimizer:
        raise PapError("pruning with parallel.distributed_optimizer=true is not supported yet; "
                       "set parallel.distributed_optimizer=false")
    old_arch = trainer.arch
    module = trainer.model.module
    states = _adam_state(trainer.optimizer)
    weights = gather_full_state(module, "param")
    moments = {}
    step = None
    for moment in ADAM_MOMENTS:
        def fetch(param, moment=moment):
            state = states.get(id(param), {})
            return state[moment] if moment in state else torch.zeros_like(param)

        moments[moment] = gather_full_state(module, fetch)
    for state in states.values():
        if "step" in state:
            step = state["step"].clone() if torch.is_tensor(state["step"]) else torch.tensor(float(state["step"]))
            break
    new_arch = remove_from_arch(old_arch, removal)
    weights = prune_state(weights, old_arch, removal)
    moments = {m: prune_state(t, old_arch, removal) for m, t in moments.items()}

    trainer.rebuild(new_arch)
    new_module = trainer.model.module
    load_full_state(new_module, weights)
    if step is not None:
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
