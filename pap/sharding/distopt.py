"""What each data-parallel rank owns under megatron's distributed optimizer.

With `parallel.distributed_optimizer`, gradients are reduce-scattered: on each DP rank
only its shard of every parameter (a contiguous range of the flattened tensor) holds the
fully reduced gradient, and Adam's state exists only for that range. Saliency is
therefore scored on owned ranges and the small score vectors are summed over DP; a
removal gathers the moments' ranges over DP before cutting them.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist


def _distributed_optimizers(optimizer):
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return [o for o in getattr(optimizer, "chained_optimizers", [optimizer]) if isinstance(o, DistributedOptimizer)]


def owned_ranges(optimizer) -> Optional[Dict[int, Tuple[object, int, int]]]:
    """id(model param) -> (its DistributedOptimizer, start, end) of this rank's range; None without one."""
    optimizers = _distributed_optimizers(optimizer)
    if not optimizers:
        return None
    owned = {}
    for opt in optimizers:
        for param in opt.model_param_group_index_map:
            rng = opt._get_model_param_range_map(param)["param"]
            owned[id(param)] = (opt, rng.start, rng.end)
    return owned


def _main_param(opt, param):
    group, order = opt.model_param_group_index_map[param]
    return opt.optimizer.param_groups[group]["params"][order]


def gather_moment(owned, param, moment: str) -> torch.Tensor:
    """This TP rank's full moment tensor for `param`, assembled from every DP rank's range."""
    from megatron.core import parallel_state as ps

    piece = None
    if id(param) in owned:
        opt, start, end = owned[id(param)]
        state = opt.optimizer.state.get(_main_param(opt, param), {})
        if moment in state:
            piece = (start, end, state[moment].detach().cpu())
    pieces = [None] * ps.get_data_parallel_world_size()
    dist.all_gather_object(pieces, piece, group=ps.get_data_parallel_group())
    full = torch.zeros(param.numel(), dtype=torch.float32)
    for item in pieces:
        if item is not None:
            start, end, values = item
            full[start:end] = values.float()
    return full.view(param.shape)


def set_owned_state(owned, param, moments: Dict[str, torch.Tensor], step: torch.Tensor) -> None:
    """Write this rank's ranges of `param`'s fp32 main copy (from the model param) and Adam moments."""
    if id(param) not in owned:
        return
    opt, start, end = owned[id(param)]
    main = _main_param(opt, param)
    with torch.no_grad():
        main.copy_(param.detach().view(-1)[start:end].to(main.dtype))
    state = opt.optimizer.state[main]
    state["step"] = step.clone()
    for name, full in moments.items():
        state[name] = full.reshape(-1)[start:end].to(main.device, torch.float32).clone()
