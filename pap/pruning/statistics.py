"""When a forward hook that gathers statistics over training tokens should count.

The saliency window's companions (layer-input Hessians, `pap.sharding.hessians`; layer
cosines, `pap.pruning.layer_cosine`) hook the model's forward passes; they must see each
training token once and no evaluation token.
"""

from __future__ import annotations

import torch


def training_forward(module: torch.nn.Module) -> bool:
    """True in a training forward pass of `module`: not an evaluation forward, and not the
    recomputation inside backward (activation checkpointing), which would see its tokens a
    second time."""
    return module.training and torch._C._current_graph_task_id() == -1
