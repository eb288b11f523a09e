"""The distillation loss on vocab-parallel logits (docs/DISTILL.md).

Under tensor parallelism each rank holds its slice of the vocabulary of both models'
logits. The KL is computed on those slices with three reductions over the TP group (the
max and the sum of the softmax, and the per-token KL), as megatron-core's
`vocab_parallel_cross_entropy` does for the next-token loss: the full-vocabulary logits are
never gathered. With `top_k` the teacher's candidates are gathered, k per rank and token.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def _all_reduce(tensor: torch.Tensor, op, group) -> torch.Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def _vocab_start(local_vocab: int, group) -> int:
    rank = dist.get_rank(group) if group is not None else 0
    return rank * local_vocab


@torch.no_grad()
def teacher_distribution(logits: torch.Tensor, temperature: float, top_k: int = 0, group=None) -> torch.Tensor:
    """This rank's slice of the teacher's target distribution over the vocabulary, in fp32.

    `logits` [..., V / tp] are the teacher's vocab-parallel logits. With `top_k` = 0 the
    target is softmax(logits / T); with k > 0 it is that softmax restricted to the k
    largest logits of the whole vocabulary and renormalised over them (zero elsewhere).
    """
    z = logits.float() / temperature
    if top_k <= 0:
        peak = _all_reduce(z.max(dim=-1, keepdim=True).values, dist.ReduceOp.MAX, group)
        exp = (z - peak).exp()
        return exp / _all_reduce(exp.sum(dim=-1, keepdim=True), dist.ReduceOp.SUM, group)
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
    probs = torch.softmax(values, dim=-1)
    local = indices - _vocab_start(local_vocab, group)
    mine = (local >= 0) & (local < local_vocab)
    target = torch.zeros_like(z)
    # scatter_add: another rank's token lands (clamped) on an index of ours, adding zero
    target.scatter_add_(-1, local.clamp(0, local_vocab - 1), torch.where(mine, probs, torch.zeros_like(probs)))
    return target


class _VocabParallelKL(torch.autograd.Function):
    """KL(target || softmax(logits / T)) per token, on vocab-parallel slices.

    Forward: three TP reductions (max, sum of exponentials, the KL's per-slice sums).
    Backward: d KL / d logits = (softmax(logits / T) - target) / T, on this rank's slice
    (the target sums to one over the vocabulary), so no reduction is needed.
    """

    @staticmethod
    def forward(ctx, logits, target, temperature, group):
        z = logits.float() / temperature
        peak = _all_reduce(z.max(dim=-1, keepdim=True).values, dist.ReduceOp.MAX, group)
        z = z - peak
        exp = z.exp()
        total = _all_reduce(exp.sum(dim=-1, keepdim=True), dist.ReduceOp.SUM, group)
        log_student = z - total.log()
        # sum_v q (log q - log p), with 0 log 0 = 0 where the target has no mass
        kl = (torch.xlogy(target, target) - target * log_student).sum(dim=-1)
        kl = _all_reduce(kl, dist.ReduceOp.SUM, group)
        ctx.save_for_backward(exp.div_(total), target)
        ctx.temperature = temperature
        ctx.dtype = logits.dtype
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        student, target = ctx.saved_tensors
        grad = (student - target).mul_(grad_kl.unsqueeze(-1) / ctx.temperature)
        return grad.to(ctx.dtype), None, None, None


def vocab_parallel_kl(student_logits: torch.Tensor, target: torch.Tensor, temperature: float,
                      group: Optional[object] = None) -> torch.Tensor:
    """Per-token KL(target || softmax(student_logits / T)), shape `student_logits.shape[:-1]`.

    `student_logits` and `target` are this rank's vocabulary slices (`target` from
    `teacher_distribution`); `group` is the tensor-parallel group (None: one rank)."""
    return _VocabParallelKL.apply(student_logits, target, temperature, group)


def distill_loss(ce: torch.Tensor, kl: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """Per-token alpha * T^2 * KL + (1 - alpha) * CE."""
    return (alpha * temperature ** 2) * kl + (1.0 - alpha) * ce
