"""Small, named patches that let megatron-core run on CPU with the gloo backend.

Each submodule fixes one topic and documents the upstream file and line it works
around. `apply()` installs all of them once; on a machine where CUDA is usable it
installs none, so the GPU path runs unmodified megatron-core.

Config choices that complete CPU support live in `pap.model` (not here, since they are
not patches): `use_cpu_initialization=True`, every fused kernel off, and
`batch_p2p_sync=False` (p2p_communication.py:398 would call `torch.cuda.synchronize`).
"""

from megatron_patches import (
    cuda_device,
    cuda_factories,
    recompute_rng,
    rng_tracker,
    tensor_cuda,
    tensor_type_strings,
    torch_norm_sequence_parallel,
)
from megatron_patches._common import cuda_usable

PATCHES = (
    rng_tracker,
    recompute_rng,
    cuda_device,
    cuda_factories,
    tensor_type_strings,
    tensor_cuda,
    torch_norm_sequence_parallel,
)
PATCH_NAMES = tuple(patch.NAME for patch in PATCHES)

_applied: list = []


def apply(skip=()) -> list:
    """Install every CPU patch not named in `skip`; returns the names installed.

    Idempotent. Inert (returns []) where CUDA is usable. `skip` exists so that tests can
    show each patch is needed.
    """
    unknown = set(skip) - set(PATCH_NAMES)
    if unknown:
        raise ValueError(f"unknown megatron patch(es) {sorted(unknown)}; known: {PATCH_NAMES}")
    if _applied or cuda_usable():
        return list(_applied)
    for patch in PATCHES:
        if patch.NAME not in skip:
            patch.apply()
            _applied.append(patch.NAME)
    return list(_applied)


def applied() -> list:
    """Names of the patches installed in this process."""
    return list(_applied)
