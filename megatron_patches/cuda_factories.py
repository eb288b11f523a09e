"""Patch `cuda_factories`: literal `device="cuda"` tensor factories in a few modules.

Upstream (megatron-core 0.16.1) hard-codes the CUDA device in:
  pipeline_parallel/schedules.py:596, 983, 2138   `total_num_tokens = torch.zeros(..., device="cuda")`
  optimizer/optimizer.py:473, 481, 485, 907       found-inf and loss-scale tensors
  optimizer/clip_grads.py:90, 103, 115, 174, 207  grad-norm accumulators
  optimizer/distrib_optimizer.py                  grad-norm and bucket helpers
  distributed/param_and_grad_buffer.py:768        a warm-up tensor
  utils.py:1207                                   `local_multi_tensor_l2_norm` (clipping without apex)
  transformer/utils.py:35                         `get_default_causal_mask` (causal mask built by softmax)

Fix: each of those modules gets its own stand-in for the name `torch`, identical to the
real module except that the factory functions map a CUDA device to the CPU. Nothing else
in the process sees a difference.
"""

import importlib
import sys

import torch

NAME = "cuda_factories"

PATCHED_MODULES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.utils",
    "megatron.core.transformer.utils",
)
_FACTORIES = ("zeros", "empty", "ones", "tensor", "full", "arange", "zeros_like", "empty_like")


class _CpuTorch:
    """The `torch` module as seen from one patched module: CUDA factories land on the CPU."""

    def __init__(self):
        for name in _FACTORIES:
            setattr(self, name, self._redirect(getattr(torch, name)))

    @staticmethod
    def _redirect(factory):
        def make(*args, **kwargs):
            device = kwargs.get("device")
            if device is not None and str(device).startswith("cuda"):
                kwargs["device"] = "cpu"
            return factory(*args, **kwargs)

        make.__name__ = factory.__name__
        return make

    def __getattr__(self, name):
        return getattr(torch, name)


def apply() -> None:
    """Rebind `torch` inside each module of PATCHED_MODULES."""
    stand_in = _CpuTorch()
    for module_name in PATCHED_MODULES:
        importlib.import_module(module_name)
        module = sys.modules[module_name]
        if getattr(module, "torch", None) is torch:
            module.torch = stand_in
