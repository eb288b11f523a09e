"""What each data-parallel rank owns under megatron's distributed optimizer.

With `parallel.distributed_optimizer`, gradients are reduce-scattered: on each DP rank
only its shard of every parameter (a contiguous range of the flattened tensor) holds the
fully reduced gradient, and Adam's state exists only for that range. Saliency is
therefore scored on owned ranges and the small score vectors are summed over DP
(`pap.sharding.reduce_saliency`); `pap.sharding.training_state` assembles masters and
moments from the ranges.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from pap.sharding.training_state import param_range


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
            owned[id(param)] = (opt, *param_range(opt, param))
    return owned
