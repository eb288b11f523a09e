"""The forward step and loss a training run uses, injectable (`Trainer(..., forward_step=...)`).

A forward step follows megatron-core's `forward_step_func` contract: called with the
micro-batch iterator and the model stage, it returns the stage's output and a function
that turns the last stage's output into `(loss, {name: value})`. The trainer logs the
`"lm loss"` entry. Another objective (an auxiliary term, distillation) is another forward
step, not another trainer: `with_loss_term` adds a term to the default one, and
`pap.distill.step.DistillForwardStep` runs a teacher beside the model.

A forward step may also have `adjust_tensor_shapes_fn(forward_only)`: the pipeline
schedule's shape adjustment for the tensors sent between stages (None: megatron's own), for
a step whose stages send more than the model's hidden state.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Dict, Tuple

import torch

LossTerm = Callable[[dict, torch.Tensor], torch.Tensor]
"""term(batch, per_token_loss) -> a scalar added to the loss (the last stage only)."""


def masked_mean_loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor) -> Tuple[torch.Tensor, Dict]:
    """The mean next-token loss over the tokens `loss_mask` keeps."""
    mask = loss_mask.reshape(-1).float()
    loss = (per_token_loss.float().reshape(-1) * mask).sum() / mask.sum().clamp(min=1)
    # clone: megatron's schedule divides the returned tensor in place by the number of
    # micro batches (schedules.py:269), which would corrupt the logged value.
    return loss, {"lm loss": loss.detach().clone()}


def next_batch(data_iterator, model) -> dict:
    """The next micro batch, on the model's device."""
    batch = next(data_iterator)
    device = next(model.parameters()).device
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def lm_forward_step(data_iterator, model):
    """The next-token language-modelling step: the default."""
    batch = next_batch(data_iterator, model)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, partial(masked_mean_loss, batch["loss_mask"])


def _with_term(term: LossTerm, batch: dict, per_token_loss: torch.Tensor):
    loss, logged = masked_mean_loss(batch["loss_mask"], per_token_loss)
    return loss + term(batch, per_token_loss), logged


def with_loss_term(term: LossTerm):
    """A forward step whose loss is the next-token loss plus `term(batch, per_token_loss)`;
    the logged `"lm loss"` stays the next-token loss."""

    def forward_step(data_iterator, model):
        batch = next_batch(data_iterator, model)
        output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
        return output, partial(_with_term, term, batch)

    return forward_step
