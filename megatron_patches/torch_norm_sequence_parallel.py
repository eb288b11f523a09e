"""Patch `torch_norm_sequence_parallel`: allow sequence parallelism with torch's RMSNorm.

Upstream (megatron-core 0.16.1): transformer/torch_norm.py:32, `WrappedTorchNorm` (the
norm of the local layer spec, used when neither apex nor Transformer Engine is present)
asserts `not config.sequence_parallel`. On GPU the Transformer Engine norm is used and
supports it.

Fix: build the same torch norm and tag its parameters `sequence_parallel=True`, which
is what Transformer Engine and apex norms do: finalize_model_grads.py:354 then
all-reduces their gradients over the tensor-parallel group.
"""

import torch

NAME = "torch_norm_sequence_parallel"

_NORMS = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}


def apply() -> None:
    """Replace `WrappedTorchNorm.__new__` with a sequence-parallel-aware builder."""
    from megatron.core.transformer import torch_norm

    def new(cls, config, hidden_size, eps=1e-5, persist_layer_norm=False,
            zero_centered_gamma=False, normalization="LayerNorm"):
        if config.layernorm_zero_centered_gamma or config.persist_layer_norm:
            raise ValueError("torch norms support neither zero-centred gamma nor persist_layer_norm")
        norm = _NORMS[config.normalization](normalized_shape=hidden_size, eps=eps)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm

    torch_norm.WrappedTorchNorm.__new__ = new
