"""Layout-independent weight initialisation.

megatron-core initialises each TP slice from a per-rank RNG stream, and each PP stage
from wherever the RNG happens to be, so the initial model depends on the parallel
layout. pap draws every full tensor from a generator seeded by (seed, global parameter
name) and keeps this rank's slice: the same seed gives the same model at any TP/PP/DP,
which is what lets runs in different layouts be compared and resumed across layouts.

Scheme (megatron's): normal(0, init_std) for every matrix, with the output projections
(`linear_proj`, `linear_fc2`) scaled by 1/sqrt(2 * num_layers); norms start at one.
"""

from __future__ import annotations

import math
import zlib

import torch

from pap.sharding.full_state import full_shape, global_name, tp_slice

_SCALED = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (1 << 63))


def full_init(name: str, shape, seed: int, init_std: float, num_layers: int) -> torch.Tensor:
    """The full (TP=1) initial value of parameter `name` (a global name)."""
    if name.endswith(("norm.weight", "layer_norm_weight")):
        return torch.ones(shape)
    if name.endswith(".bias"):
        return torch.zeros(shape)
    std = init_std / math.sqrt(2 * num_layers) if name.endswith(_SCALED) else init_std
    return torch.empty(shape).normal_(0.0, std, generator=_generator(seed, name))


@torch.no_grad()
def initialize_weights(model, seed: int, init_std: float, num_layers: int) -> None:
    """Overwrite every parameter of this rank's `model` stage with its slice of `full_init`."""
    for local_name, param in model.named_parameters():
        name = global_name(model, local_name)
        if name == "output_layer.weight" and model.share_embeddings_and_output_weights:
            name = "embedding.word_embeddings.weight"
        full = full_init(name, full_shape(param), seed, init_std, num_layers)
        param.copy_(tp_slice(full, param).to(param.dtype))
