"""The distillation loss on one rank against torch.nn.functional: the KL's value and its
gradient (autograd through log_softmax), with T != 1 and a top-k teacher."""

import pytest
import torch
import torch.nn.functional as F

from pap.distill.loss import distill_loss, teacher_distribution, vocab_parallel_kl


def _plain_kl(student, teacher, temperature, top_k):
    scaled = teacher / temperature
    if top_k:
        values, indices = scaled.topk(top_k, dim=-1)
        target = torch.zeros_like(scaled).scatter(-1, indices, F.softmax(values, dim=-1))
    else:
        target = F.softmax(scaled, dim=-1)
    log_student = F.log_softmax(student / temperature, dim=-1)
    return (torch.special.xlogy(target, target) - target * log_student).sum(-1)


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (2.5, 0), (0.7, 3), (2.0, 17)])
def test_kl_and_its_gradient_match_functional(temperature, top_k):
    torch.manual_seed(0)
    teacher = torch.randn(3, 5, 40) * 3
    student = (torch.randn(3, 5, 40) * 3).requires_grad_()
    reference = student.detach().clone().requires_grad_()
    weights = torch.rand(3, 5)

    target = teacher_distribution(teacher, temperature, top_k)
    assert torch.allclose(target.probs.sum(-1), torch.ones(3, 5))
    assert torch.allclose(target.neg_entropy, torch.special.xlogy(target.probs, target.probs).sum(-1), atol=1e-5)
    if top_k:
        assert ((target.probs > 0).sum(-1) == top_k).all()
    kl = vocab_parallel_kl(student, target, temperature)
    want = _plain_kl(reference, teacher, temperature, top_k)
    assert torch.allclose(kl, want, atol=1e-5)
    (kl * weights).sum().backward()
    (want * weights).sum().backward()
    assert torch.allclose(student.grad, reference.grad, atol=1e-6)


def test_kl_is_zero_for_the_teacher_itself_and_the_mix_is_weighted():
    logits = torch.randn(4, 30)
    assert vocab_parallel_kl(logits, teacher_distribution(logits, 1.5), 1.5).abs().max() < 1e-6
    ce, kl = torch.tensor([2.0]), torch.tensor([0.5])
    assert distill_loss(ce, kl, 0.25, 2.0).item() == pytest.approx(0.25 * 4 * 0.5 + 0.75 * 2.0)
    assert torch.equal(distill_loss(ce, kl, 0.0, 3.0), ce)  # alpha 0: the next-token loss, exactly
