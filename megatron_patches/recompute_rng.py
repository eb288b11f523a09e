"""Patch `recompute_rng`: activation recomputation saves and restores the CPU generator.

Upstream: megatron/core/tensor_parallel/random.py:444 and :454 (megatron-core 0.16.1),
`_get_all_rng_states` / `_set_all_rng_states`, which `CheckpointFunction.forward` (:514)
and its backward call to replay a recomputed chunk with the same random numbers, read
and write the CUDA generator through `_get_cuda_rng_state` (:41) / `_set_cuda_rng_state`
(:72). On a CPU-only torch that fails ("Torch not compiled with CUDA enabled"), so
`model.recompute: selective | full` cannot train.

Fix: those two functions use the CPU generator, the one `rng_tracker` already keeps
megatron's model-parallel streams on. `_get_all_rng_states` then returns the CPU state
twice and `_set_all_rng_states` sets it twice, to the same value. Can go when upstream's
random module learns a CPU device (or on CUDA, where it is inert).
"""

import torch

NAME = "recompute_rng"


def apply() -> None:
    """Point megatron's CUDA-generator get/set helpers at the CPU generator."""
    from megatron.core.tensor_parallel import random as mp_random

    def get_state(device="cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
        return torch.get_rng_state()

    def set_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
        torch.set_rng_state(new_state)

    mp_random._get_cuda_rng_state = get_state
    mp_random._set_cuda_rng_state = set_state
