"""Adam's moments as full tensors by global parameter name, and back.

Megatron keeps Adam state either per model parameter (plain optimizer) or per
data-parallel-owned range of each flattened parameter (distributed optimizer). Pruning
and the `full` checkpoint format both need the moments as full (TP=1) tensors; these two
functions hide which optimizer holds them.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.distributed as dist

from pap.sharding.distopt import gather_moment, owned_ranges, set_owned_state
from pap.sharding.full_state import gather_full_state, load_full_state

MOMENTS = ("exp_avg", "exp_avg_sq")


def _inner_optimizers(optimizer):
    return [chained.optimizer for chained in getattr(optimizer, "chained_optimizers", [optimizer])]


def _by_param(optimizer) -> Dict[int, Tuple[object, object]]:
    """id(model param) -> (torch optimizer, its key) for the plain optimizer."""
    found = {}
    for inner in _inner_optimizers(optimizer):
        for group in inner.param_groups:
            for param in group["params"]:
                found[id(param)] = (inner, param)
    return found


def adam_step(optimizer) -> float:
    """Adam's step count, agreed by every rank (a rank may own no state at all)."""
    step = 0.0
    for inner in _inner_optimizers(optimizer):
        for state in inner.state.values():
            if "step" in state:
                step = float(state["step"])
                break
    value = torch.tensor([step], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value.item())


def gather_adam(module, optimizer, across_pp: bool = True) -> Dict[str, Dict[str, torch.Tensor]]:
    """{moment: {global name: full tensor}} (zeros where Adam has taken no step yet)."""
    owned = owned_ranges(optimizer)
    plain = _by_param(optimizer) if owned is None else {}
    moments = {}
    for moment in MOMENTS:
        def fetch(param, moment=moment):
            if owned is not None:
                return gather_moment(owned, param, moment)
            inner, key = plain.get(id(param), (None, None))
            state = inner.state.get(key, {}) if inner is not None else {}
            return state[moment] if moment in state else torch.zeros_like(param, dtype=torch.float32)

        moments[moment] = gather_full_state(module, fetch, across_pp=across_pp)
    return moments


def scatter_adam(module, optimizer, moments: Dict[str, Dict[str, torch.Tensor]], step: float) -> None:
    """Give `optimizer` (built for `module`) the moments `moments` and Adam step `step`."""
    owned = owned_ranges(optimizer)
    plain = _by_param(optimizer) if owned is None else {}
    local = {m: {} for m in MOMENTS}
    for moment in MOMENTS:
        def keep(param, piece, moment=moment):
            local[moment][id(param)] = piece

        load_full_state(module, moments[moment], assign=keep)
    step_tensor = torch.tensor(float(step))
    for param in module.parameters():
        values = {m: local[m][id(param)] for m in MOMENTS}
        if owned is not None:
            set_owned_state(owned, param, values, step_tensor)
            continue
        inner, key = plain[id(param)]
        state = inner.state[key]
        state["step"] = step_tensor.clone()
        for moment, value in values.items():
            state[moment] = value.to(param.device, torch.float32).clone()
