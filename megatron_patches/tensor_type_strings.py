"""Patch `tensor_type_strings`: megatron's optimizer dispatches on CUDA type names.

Upstream (megatron-core 0.16.1):
  optimizer/clip_grads.py:167   `assert param.grad.type() == 'torch.cuda.FloatTensor'`
  optimizer/distrib_optimizer.py:361, 420, 582   `model_param.type() in ['torch.cuda.FloatTensor', ...]`
A CPU tensor reports 'torch.FloatTensor', so gradient clipping asserts and the
distributed optimizer raises "Wrapped parameters must be one of torch.cuda.FloatTensor...".

Fix: `Tensor.type()` with no argument reports the 'torch.cuda.*' name for a CPU tensor,
only when the caller is a module of `megatron.core.optimizer`. Every other caller, and
every call that converts (`t.type(dtype)`), is untouched.
"""

import torch

from megatron_patches._common import caller_module

NAME = "tensor_type_strings"


def apply() -> None:
    """Wrap `torch.Tensor.type` to answer CUDA names to megatron's optimizer."""
    original = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            name = original(self)
            if (
                caller_module().startswith("megatron.core.optimizer")
                and name.startswith("torch.")
                and not name.startswith("torch.cuda.")
            ):
                return "torch.cuda." + name[len("torch.") :]
            return name
        return original(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_
