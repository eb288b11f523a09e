"""Saliency accumulated on one rank over the gradient steps since the last pruning step.

After each backward pass (gradients fully reduced over data-parallel ranks), every rank
scores the `linear_proj` and `linear_fc2` shards it holds and adds the per-head,
per-FFN-channel and per-hidden-channel sums to its running totals. With `coupled` (Adapt-Pruner's
within-layer score, `prune.adapt_score: coupled`) a head also scores its query rows of
`linear_qkv` and an equal share of its KV group's key and value rows, and an FFN channel its
gate and up rows of `linear_fc1`: every weight that goes with the unit. Those rows are held
by the TP rank that holds the unit, so the sums stay per head and per channel and are
reduced, saved and resumed as before. Scores are partial:
heads and channels are split over TP ranks and layers over PP stages, and hidden-channel
sums need adding over both; `pap.sharding.reduce_saliency` assembles the global picture.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from pap.pruning.saliency import element_saliency, fc2_scores, needs_fisher, proj_scores


def local_heads_per_group(attention) -> List[int]:
    """Query heads per KV group of this TP rank's share of `attention`, in `linear_qkv` order."""
    counts = getattr(attention, "heads_per_group", None)  # pap's cluster attention (uneven groups)
    if counts is not None:
        return [n for n in counts if n > 0]
    groups = attention.num_query_groups_per_partition
    return [attention.num_attention_heads_per_partition // groups] * groups


def qkv_head_scores(scores: torch.Tensor, heads_per_group: Sequence[int], head_dim: int) -> torch.Tensor:
    """`linear_qkv` element scores (rows per KV group: its query heads, then its key and value
    head, `head_dim` rows each) -> per query head: its own query rows plus 1/n of its group's
    key and value rows (n: the group's query heads), so a group's heads add up to all its rows."""
    per_unit = scores.reshape(-1, head_dim, scores.shape[-1]).sum(dim=(1, 2))
    out, unit = [], 0
    for n in heads_per_group:
        shared = (per_unit[unit + n] + per_unit[unit + n + 1]) / n
        out.append(per_unit[unit:unit + n] + shared)
        unit += n + 2
    return torch.cat(out)


def fc1_channel_scores(scores: torch.Tensor) -> torch.Tensor:
    """SwiGLU `linear_fc1` element scores [gate rows; up rows] -> per FFN channel."""
    per_row = scores.sum(dim=1)
    width = per_row.shape[0] // 2
    return per_row[:width] + per_row[width:]


def _grad(param) -> torch.Tensor:
    grad = getattr(param, "main_grad", None)
    return param.grad if grad is None else grad


class SaliencyAccumulator:
    """Running group-score sums of this rank's layers (keys: global layer index)."""

    def __init__(self, metric: str = "mix", coupled: bool = False):
        self.metric = metric
        self.coupled = coupled
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
            if self.coupled:
                attention = layer.self_attention
                qkv = self._scores(f"{index}.qkv", attention.linear_qkv.weight, owned)
                per_head = per_head + qkv_head_scores(qkv, local_heads_per_group(attention), head_dim)
                per_channel = per_channel + fc1_channel_scores(self._scores(f"{index}.fc1", layer.mlp.linear_fc1.weight,
                                                                            owned))
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
