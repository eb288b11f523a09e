"""Patch `tensor_cuda`: `Tensor.cuda()` calls inside megatron-core.

Upstream (megatron-core 0.16.1): models/common/language_module/language_module.py:244
does `weight.data = weight.data.cuda()` when embeddings are tied across the first and
last pipeline stage; optimizer/optimizer.py:375/380 and distrib_optimizer.py:1089 do the
same on their reload paths. On a CPU-only torch `.cuda()` raises.

Fix: `Tensor.cuda()` returns the tensor itself when called from `megatron.core.*`.
"""

import torch

from megatron_patches._common import caller_module

NAME = "tensor_cuda"


def apply() -> None:
    """Make `Tensor.cuda()` a no-op for megatron-core callers."""
    original = torch.Tensor.cuda

    def cuda_(self, *args, **kwargs):
        if caller_module().startswith("megatron.core"):
            return self
        return original(self, *args, **kwargs)

    torch.Tensor.cuda = cuda_
