"""Patch `rng_tracker`: keep megatron's model-parallel RNG states on the CPU generator.

Upstream: megatron/core/tensor_parallel/random.py:235 (megatron-core 0.16.1),
`CudaRNGStatesTracker.add` calls `torch.cuda.get_rng_state()`, and `fork` swaps CUDA
generator states. `model_parallel_cuda_manual_seed` (:423) calls `add`, and every
attention forward enters `fork` (transformer/dot_product_attention.py:217), so without
this nothing trains on a CPU-only torch.

Fix: `add` and `fork` save, seed and restore `torch.get_rng_state()` instead. The named
states keep megatron's meaning (a TP-rank-specific stream for dropout inside TP regions).
Can go when upstream's tracker learns a CPU device (or on CUDA, where it is inert).
"""

import contextlib

import torch

NAME = "rng_tracker"


def apply() -> None:
    """Replace `CudaRNGStatesTracker.add` / `.fork` with CPU-generator versions."""
    from megatron.core.tensor_parallel import random as mp_random

    tracker_cls = mp_random.CudaRNGStatesTracker

    def add(self, name, seed):
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        self.seeds_.add(seed)
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        saved = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(saved)

    @contextlib.contextmanager
    def fork(self, name=mp_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        outer_state = torch.get_rng_state()
        outer_name = self._current_state_name
        if outer_name != "default-rng":
            self.states_[outer_name] = outer_state
        torch.set_rng_state(self.states_[name])
        self._current_state_name = name
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            if outer_name != "default-rng":
                outer_state = self.states_[outer_name]
            torch.set_rng_state(outer_state)
            self._current_state_name = outer_name

    tracker_cls.add = add
    tracker_cls.fork = fork
