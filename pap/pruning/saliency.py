"""Element saliency of output-group weights and its reduction to group scores.

Only the output layer group is scored (`linear_proj`, `linear_fc2`; docs/METHOD.md §4):
removing all inputs of a node removes the node, and that group is 2-3x smaller than
the input group. With weight w, gradient g and F the running mean of g² (empirical
Fisher, the diagonal Hessian of LLM-Pruner):

    first: |w·g|        mix (default): |w·g − ½·w²·F|        obd: |½·w²·F|

Element scores are reduced at once to three small vectors per layer — per query head
(sum over its `head_dim` input columns of `linear_proj`), per FFN channel (input column
of `linear_fc2`) and per hidden channel (output row of both) — so what is kept and
communicated between pruning steps is a few thousand numbers per layer, plus the
Fisher buffer for `mix`/`obd`.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

METRICS: Dict[str, Callable] = {}


def metric(name: str):
    """Register an element-saliency function `f(weight, grad, fisher) -> scores` (pluggable)."""

    def register(fn):
        METRICS[name] = fn
        return fn

    return register


@metric("first")
def first_order(weight, grad, fisher):
    return (weight * grad).abs()


@metric("mix")
def mixed_order(weight, grad, fisher):
    return (weight * grad - 0.5 * weight.square() * fisher).abs()


@metric("obd")
def second_order(weight, grad, fisher):
    return (0.5 * weight.square() * fisher).abs()


def needs_fisher(name: str) -> bool:
    return name in ("mix", "obd")


def element_saliency(name: str, weight: torch.Tensor, grad: torch.Tensor,
                     fisher: Optional[torch.Tensor]) -> torch.Tensor:
    """Saliency of every element of `weight` under metric `name`."""
    if name not in METRICS:
        raise KeyError(f"unknown saliency metric {name!r}; known: {', '.join(sorted(METRICS))}")
    return METRICS[name](weight.float(), grad.float(), None if fisher is None else fisher.float())


def proj_scores(scores: torch.Tensor, head_dim: int):
    """`linear_proj` element scores [hidden, heads*head_dim] -> (per head, per hidden channel)."""
    per_head = scores.reshape(scores.shape[0], -1, head_dim).sum(dim=(0, 2))
    return per_head, scores.sum(dim=1)


def fc2_scores(scores: torch.Tensor):
    """`linear_fc2` element scores [hidden, ffn] -> (per FFN channel, per hidden channel)."""
    return scores.sum(dim=0), scores.sum(dim=1)
