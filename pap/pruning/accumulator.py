"""Saliency accumulated on one rank over the gradient steps since the last pruning step.

After each backward pass (gradients fully reduced over data-parallel ranks), every rank
scores the `linear_proj` and `linear_fc2` shards it holds and adds the per-head,
per-FFN-channel and per-hidden-channel sums to its running totals. Scores are partial:
heads and channels are split over TP ranks and layers over PP stages, and hidden-channel
sums need adding over both; `pap.sharding.reduce_saliency` assembles the global picture.
"""

from __future__ import annotations

from typing import Dict

import torch

from pap.pruning.saliency import element_saliency, fc2_scores, needs_fisher, proj_scores


def _grad(param) -> torch.Tensor:
    grad = getattr(param, "main_grad", None)
    return param.grad if grad is None else grad


class SaliencyAccumulator:
    """Running group-score sums of this rank's layers (keys: global layer index)."""

    def __init__(self, metric: str = "mix"):
        self.metric = metric
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.fisher: Dict[str, torch.Tensor] = {}
        self.attn: Dict[int, torch.Tensor] = {}
        self.ffn: Dict[int, torch.Tensor] = {}
        self.stem: torch.Tensor = None

    @torch.no_grad()
    def update(self, model, head_dim: int, owned=None) -> None:
        """Score this rank's stage of `model` (a megatron GPTModel) with its current gradients.

        `owned` (distributed optimizer): id(param) -> (_, start, end), the flattened range
        whose gradient is fully reduced on this rank; only that range is scored, the rest
        counts as zero and the DP ranks' sums are added up later.
        """
        self.steps += 1
        stem = None
        for layer in model.decoder.layers:
            index = layer.layer_number - 1
            proj = layer.self_attention.linear_proj.weight
            fc2 = layer.mlp.linear_fc2.weight
            per_head, hidden_p = proj_scores(self._scores(f"{index}.proj", proj, owned), head_dim)
            per_channel, hidden_f = fc2_scores(self._scores(f"{index}.fc2", fc2, owned))
            self.attn[index] = self.attn.get(index, 0) + per_head.double()
            self.ffn[index] = self.ffn.get(index, 0) + per_channel.double()
            layer_stem = (hidden_p + hidden_f).double()
            stem = layer_stem if stem is None else stem + layer_stem
        if stem is not None:
            self.stem = stem if self.stem is None else self.stem + stem

    def _scores(self, key: str, param, owned=None) -> torch.Tensor:
        grad = _grad(param).float()
        weight = param.detach()
        if owned is not None:
            # Score the owned range only; scatter back into a zero matrix of the full shape.
            start, end = owned[id(param)][1:] if id(param) in owned else (0, 0)
            scores = torch.zeros(param.numel(), dtype=torch.float32, device=grad.device)
            if end > start:
                scores[start:end] = self._element(key, weight.reshape(-1)[start:end], grad.reshape(-1)[start:end])
            return scores.view(param.shape)
        return self._element(key, weight, grad)

    def _element(self, key: str, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        fisher = None
        if needs_fisher(self.metric):
            total = self.fisher.get(key)
            total = grad.square() if total is None else total + grad.square()
            self.fisher[key] = total
            fisher = total / self.steps  # running mean of g² over the window
        return element_saliency(self.metric, weight, grad, fisher)

    def state_dict(self) -> dict:
        """Everything needed to resume mid-window and make the same decision."""
        return {"metric": self.metric, "steps": self.steps, "fisher": self.fisher, "attn": self.attn,
                "ffn": self.ffn, "stem": self.stem}

    def load_state_dict(self, state: dict) -> None:
        self.metric, self.steps = state["metric"], state["steps"]
        self.fisher, self.attn, self.ffn, self.stem = state["fisher"], state["attn"], state["ffn"], state["stem"]
