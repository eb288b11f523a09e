"""Per-layer cosine similarity of each decoder layer's input and output hidden states, summed
over the training tokens of the window since the last increment (`prune.layers: adaptive`).

A forward hook on every decoder layer of this rank's stage adds, per token, cos(x, y) of
the layer's input x and output y (float64) and counts the tokens. The sums are partial:
each data-parallel rank sees its own sequences and each stage its own layers;
`pap.sharding.reduce_saliency.global_layer_cosine` adds them up. Under tensor parallelism
every TP rank holds the same full hidden states, so only TP rank 0 counts them, unless
sequence parallelism splits the sequence over TP ranks (then each counts its part).

Evaluation forwards and the recomputation inside backward (activation checkpointing) are
skipped, as in `pap.sharding.hessians`, so each training token counts once.
"""

from __future__ import annotations

from typing import Dict

import torch

from pap.pruning.statistics import training_forward


def token_cosines(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """cos(x_t, y_t) per token, in float64 (hidden states [..., hidden])."""
    x, y = x.double().reshape(-1, x.shape[-1]), y.double().reshape(-1, y.shape[-1])
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(1e-30)


class LayerCosine:
    """Running sums of cos(input, output) and token counts per global layer index."""

    def __init__(self):
        self._handles, self._model = [], None
        self.reset()

    def reset(self) -> None:
        self.sums: Dict[int, float] = {}
        self.tokens: Dict[int, int] = {}

    def attach(self, model, counts: bool) -> None:
        """Hook this stage's decoder layers (again after every rebuild). `counts`: this rank adds
        its tokens (TP rank 0, or every TP rank under sequence parallelism)."""
        if model is self._model:
            return
        self.detach()
        self._model = model
        for layer in model.decoder.layers:
            self._handles.append(layer.register_forward_hook(self._hook(layer.layer_number - 1, counts),
                                                             with_kwargs=True))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._model = [], None

    def _hook(self, index: int, counts: bool):
        def record(module, args, kwargs, output):
            if not counts or not training_forward(module):
                return
            x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            y = output[0] if isinstance(output, tuple) else output
            with torch.no_grad():
                cos = token_cosines(x.detach(), y.detach())
            self.sums[index] = self.sums.get(index, 0.0) + float(cos.sum())
            self.tokens[index] = self.tokens.get(index, 0) + cos.numel()

        return record

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "tokens": dict(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.tokens = dict(state["sums"]), dict(state["tokens"])
