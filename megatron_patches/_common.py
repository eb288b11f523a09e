"""Helpers shared by the CPU patches."""

import sys

import torch


def cuda_usable() -> bool:
    """True where megatron-core's CUDA assumptions hold, so every patch must stay inert."""
    return torch.cuda.is_available()


def caller_module(depth: int = 2) -> str:
    """Name of the module `depth` frames up (1 = the caller of the function calling this)."""
    return sys._getframe(depth).f_globals.get("__name__", "")
