"""The distillation loss on vocab-parallel logits (docs/DISTILL.md).

Under tensor parallelism each rank holds its slice of the vocabulary of both models'
logits. The KL is computed on those slices with three reductions over the TP group (the
max and the sum of the softmax, and the per-token KL), as megatron-core's
`vocab_parallel_cross_entropy` does for the next-token loss: the full-vocabulary logits are
never gathered. With `top_k` the teacher's candidates are gathered, k per rank and token.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist


def _all_reduce(tensor: torch.Tensor, op, group) -> torch.Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def _vocab_start(local_vocab: int, group) -> int:
    rank = dist.get_rank(group) if group is not None else 0
    return rank * local_vocab


class Target(NamedTuple):
    """The teacher's target on this rank's vocabulary slice."""

    probs: torch.Tensor
    """[..., V / tp] fp32: this slice of q (summing to one over the whole vocabulary)."""
    neg_entropy: torch.Tensor
    """[...]: sum over the whole vocabulary of q log q (the KL's student-free part)."""


@torch.no_grad()
def teacher_distribution(logits: torch.Tensor, temperature: float, top_k: int = 0, group=None) -> Target:
    """The teacher's target distribution over the vocabulary, this rank's slice, in fp32.

    `logits` [..., V / tp] are the teacher's vocab-parallel logits. With `top_k` = 0 the
    target is softmax(logits / T); with k > 0 it is that softmax restricted to the k
    largest logits of the whole vocabulary and renormalised over them (zero elsewhere).
    """
    z = logits.float() / temperature
    if top_k <= 0:
        peak = _all_reduce(z.max(dim=-1, keepdim=True).values, dist.ReduceOp.MAX, group)
        probs = (z - peak).exp_()
        total = _all_reduce(probs.sum(dim=-1, keepdim=True), dist.ReduceOp.SUM, group)
        probs.div_(total)
        # sum q log q = sum q (z - peak - log total) = sum q z - peak - log total
        cross = _all_reduce((probs * z).sum(dim=-1), dist.ReduceOp.SUM, group)
        return Target(probs, cross - (peak + total.log()).squeeze(-1))
    local_vocab = z.shape[-1]
    values, indices = z.topk(min(top_k, local_vocab), dim=-1)
    indices = indices + _vocab_start(local_vocab, group)
    size = dist.get_world_size(group) if group is not None else 1
    if size > 1:  # every rank's candidates; the k largest of them are the vocabulary's
        gathered_values = [torch.empty_like(values) for _ in range(size)]
        gathered_indices = [torch.empty_like(indices) for _ in range(size)]
        dist.all_gather(gathered_values, values.contiguous(), group=group)
        dist.all_gather(gathered_indices, indices.contiguous(), group=group)
        values, indices = torch.cat(gathered_values, dim=-1), torch.cat(gathered_indices, dim=-1)
    values, chosen = values.topk(min(top_k, values.shape[-1]), dim=-1)
    indices = indices.gather(-1, chosen)
    log_probs = torch.log_softmax(values, dim=-1)
    probs = log_probs.exp()
    local = indices - _vocab_start(local_vocab, group)
    mine = (local >= 0) & (local < local_vocab)
    target = torch.zeros_like(z)
    # scatter_add: another rank's token lands (clamped) on an index of ours, adding zero
    target.scatter_add_(-1, local.clamp(0, local_vocab - 1), torch.where(mine, probs, torch.zeros_like(probs)))
    return Target(target, (probs * log_probs).sum(dim=-1))


class _VocabParallelKL(torch.autograd.Function):
    """KL(q || softmax(logits / T)) per token, on vocab-parallel slices.

    KL = sum q log q - sum q log p, and sum q log p = sum q z - max z - log sum exp(z - max z)
    for z = logits / T (q sums to one), so the forward is three TP reductions (the max, the
    sum of exponentials, sum q z) and no per-element logarithm. Backward:
    d KL / d logits = (softmax(logits / T) - q) / T on this rank's slice, no reduction.
    """

    @staticmethod
    def forward(ctx, logits, probs, neg_entropy, temperature, group):
        z = logits.float() / temperature
        peak = _all_reduce(z.max(dim=-1, keepdim=True).values, dist.ReduceOp.MAX, group)
        cross = _all_reduce((probs * z).sum(dim=-1), dist.ReduceOp.SUM, group)
        student = z.sub_(peak).exp_()
        total = _all_reduce(student.sum(dim=-1, keepdim=True), dist.ReduceOp.SUM, group)
        kl = neg_entropy - (cross - (peak + total.log()).squeeze(-1))
        ctx.save_for_backward(student.div_(total), probs)
        ctx.temperature = temperature
        ctx.dtype = logits.dtype
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        student, probs = ctx.saved_tensors
        grad = (student - probs).mul_(grad_kl.unsqueeze(-1) / ctx.temperature)
        return grad.to(ctx.dtype), None, None, None, None


def vocab_parallel_kl(student_logits: torch.Tensor, target: Target, temperature: float,
                      group: Optional[object] = None) -> torch.Tensor:
    """Per-token KL(target || softmax(student_logits / T)), shape `student_logits.shape[:-1]`.

    `student_logits` is this rank's vocabulary slice and `target` the teacher's
    (`teacher_distribution`); `group` is the tensor-parallel group (None: one rank)."""
    return _VocabParallelKL.apply(student_logits, target.probs, target.neg_entropy, temperature, group)


def distill_loss(ce: torch.Tensor, kl: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """Per-token alpha * T^2 * KL + (1 - alpha) * CE."""
    return (alpha * temperature ** 2) * kl + (1.0 - alpha) * ce
