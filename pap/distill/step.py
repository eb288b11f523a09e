"""The forward step that runs the teacher beside the student (megatron-core's
`forward_step_func` contract, `pap.forward_step`).

Each stage runs its teacher stage on the same micro batch, forward only. Under pipeline
parallelism the teacher's activations travel with the student's: a stage sends
`[student hidden | teacher hidden]` concatenated along the hidden dimension, the schedule's
tensor shapes widened to match (`adjust_tensor_shapes_fn`), and the next stage splits
them. Gradients reach only the student's part (the teacher's is computed without a
graph), so the last stage holds both models' logits and the schedule is megatron's own.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, List, Optional

import torch

from pap.config import DistillConfig
from pap.distill.loss import distill_loss, teacher_distribution, vocab_parallel_kl
from pap.distill.teacher import Teacher
from pap.forward_step import lm_forward_step, masked_mean_loss, next_batch


def _masked_sum(mask: torch.Tensor, per_token: torch.Tensor) -> torch.Tensor:
    return (per_token.detach().float().reshape(-1) * mask.reshape(-1).float()).sum()


class DistillForwardStep:
    """Student and teacher forward, and the loss alpha T^2 KL + (1 - alpha) CE on the last stage.

    `teacher` and `teaching` are set by `pap.distill.component.Distillation`; while not
    teaching (and in every evaluation forward) the step is the plain next-token step.
    """

    def __init__(self, cfg: DistillConfig):
        self.cfg = cfg
        self.teacher: Optional[Teacher] = None
        self.teaching = False
        self.sums: List[torch.Tensor] = []
        """Per micro batch of the last stage: (KL sum, CE sum, tokens), detached."""

    def adjust_tensor_shapes_fn(self, forward_only: bool) -> Optional[Callable]:
        """The pipeline schedule's shape adjustment: each tensor sent between stages carries
        the teacher's hidden state after the student's (None: nothing extra travels)."""
        if forward_only or not self.teaching:
            return None
        width = self.teacher.hidden_size

        def widen(recv_shapes, send_shapes):
            return ([(*shape[:-1], shape[-1] + width) for shape in recv_shapes],
                    [(*shape[:-1], shape[-1] + width) for shape in send_shapes])

        return widen

    def __call__(self, data_iterator, model):
        if not (self.teaching and model.training):
            return lm_forward_step(data_iterator, model)
        batch = next_batch(data_iterator, model)
        student, teacher = model.module, self.teacher.module
        received = student.decoder.input_tensor  # a later stage: [student | teacher] from the one before
        if received is not None:
            width = student.config.hidden_size
            student.decoder.set_input_tensor(received[..., :width])
            teacher.set_input_tensor(received[..., width:])
        with torch.no_grad():
            teacher_output = teacher(batch["tokens"], batch["position_ids"], None)
        output = model(batch["tokens"], batch["position_ids"], None)
        if not student.post_process:  # hidden states on to the next stage; no loss here
            return torch.cat([output, teacher_output], dim=-1), partial(masked_mean_loss, batch["loss_mask"])
        return output, partial(self._loss, batch, student, teacher_output)

    def _loss(self, batch: dict, student, teacher_logits: torch.Tensor, student_logits: torch.Tensor):
        from megatron.core import parallel_state as ps  # loaded with the model

        group = ps.get_tensor_model_parallel_group()
        # The next-token loss exactly as GPTModel computes it with labels ([s, b, v] logits).
        ce = student.compute_language_model_loss(batch["labels"], student_logits.transpose(0, 1).contiguous())
        target = teacher_distribution(teacher_logits, self.cfg.temperature, self.cfg.top_k, group)
        kl = vocab_parallel_kl(student_logits, target, self.cfg.temperature, group)
        loss, _ = masked_mean_loss(batch["loss_mask"], distill_loss(ce, kl, self.cfg.alpha, self.cfg.temperature))
        ce_mean, logged = masked_mean_loss(batch["loss_mask"], ce)
        mask = batch["loss_mask"]
        self.sums.append(torch.stack([_masked_sum(mask, kl), _masked_sum(mask, ce),
                                      mask.float().sum()]).double())
        return loss, logged
