"""Rank functions for the distillation tests (importable by spawn)."""

from __future__ import annotations


def train_source(cfg_dict: dict) -> None:
    """Train `cfg_dict`'s model to its `train.iters` and save it (a teacher or a student's source)."""
    from pap.config import config_from_dict
    from pap.trainer import Trainer

    trainer = Trainer(config_from_dict(cfg_dict))
    trainer.run()
    trainer.close()


def reduced_grads(trainer) -> dict:
    """The full reduced gradient of every student parameter, on every rank. Under the
    distributed optimizer each DP rank holds the reduced gradient of its own range only:
    the ranges are summed over DP first."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from pap.sharding.distopt import owned_ranges
    from pap.sharding.full_state import gather_full_state

    owned = owned_ranges(trainer.optimizer)
    if owned is not None:
        for param in trainer.model.module.parameters():
            _, start, end = owned.get(id(param), (None, 0, 0))
            mine = torch.zeros_like(param.main_grad).view(-1)
            mine[start:end] = param.main_grad.view(-1)[start:end]
            dist.all_reduce(mine, group=ps.get_data_parallel_group())
            param.main_grad.view(-1).copy_(mine)
    return gather_full_state(trainer.model.module, "grad")


def distilled_step(cfg_dict: dict) -> dict:
    """One global batch's forward and backward through the distillation forward step:
    the logged next-token loss, the batch's KL and CE, and the student's full gradients."""
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.trainer import Trainer
    from tests.distributed.workers import _everything_on_rank0

    trainer = Trainer(config_from_dict(cfg_dict))
    component = trainer.callback("distill")
    trainer.model.zero_grad_buffer()
    loss = trainer.forward_backward(trainer.train_batches.microbatches(0))
    component.post_step(trainer, None)  # reduces the step's KL and CE over the ranks
    grads = _everything_on_rank0(reduced_grads(trainer))
    trainer.close()
    if dist.get_rank() != 0:
        return None
    return {"loss": loss, "kl": component.last["distill/kl"], "ce": component.last["distill/ce"], "grads": grads}


def plain_torch_reference(cfg_dict: dict) -> dict:
    """The same batch on one process, the loss written in plain torch on full logits:
    softmax / log-softmax / cross-entropy of `torch.nn.functional`, no pap loss code."""
    import torch
    import torch.nn.functional as F

    from pap.config import config_from_dict
    from pap.distill.teacher import load_teacher
    from pap.trainer import Trainer

    cfg = config_from_dict(cfg_dict)
    d = cfg.distill
    trainer = Trainer(cfg, callbacks=[])  # the student alone, with the next-token step
    teacher = load_teacher(cfg, trainer.arch, True).module
    trainer.model.zero_grad_buffer()
    micro_batches = list(trainer.train_batches.microbatches(0))
    lm, kl_sum, ce_sum, tokens = 0.0, 0.0, 0.0, 0.0
    for batch in micro_batches:
        student = trainer.model(batch["tokens"], batch["position_ids"], None).float()
        with torch.no_grad():
            scaled = teacher(batch["tokens"], batch["position_ids"], None).float() / d.temperature
        if d.top_k:
            values, indices = scaled.topk(d.top_k, dim=-1)
            target = torch.zeros_like(scaled).scatter(-1, indices, F.softmax(values, dim=-1))
        else:
            target = F.softmax(scaled, dim=-1)
        log_student = F.log_softmax(student / d.temperature, dim=-1)
        kl = (torch.special.xlogy(target, target) - target * log_student).sum(-1)
        ce = F.cross_entropy(student.flatten(0, 1), batch["labels"].flatten(), reduction="none").view_as(kl)
        mask = batch["loss_mask"].float()
        per_token = d.alpha * d.temperature ** 2 * kl + (1 - d.alpha) * ce
        loss = (per_token * mask).sum() / mask.sum()
        (loss / len(micro_batches)).backward()
        lm += float((ce * mask).sum() / mask.sum()) / len(micro_batches)
        kl_sum, ce_sum, tokens = kl_sum + float((kl * mask).sum()), ce_sum + float((ce * mask).sum()), tokens + float(mask.sum())
    trainer.model.finish_grad_sync()
    grads = reduced_grads(trainer)
    trainer.close()
    return {"loss": lm, "kl": kl_sum / tokens, "ce": ce_sum / tokens, "grads": grads}


def losses_and_weights(cfg_dict: dict, steps: int) -> dict:
    """`steps` training losses, the run's removals and the final full weights (rank 0)."""
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.sharding.full_state import gather_full_state
    from pap.trainer import Trainer
    from tests.distributed.workers import _everything_on_rank0

    trainer = Trainer(config_from_dict(cfg_dict))
    losses = [trainer.train_step().loss for _ in range(steps)]
    pruning = trainer.callback("pruning")
    removals = [r.to_dict() for r in pruning.removals] if pruning else []
    params = _everything_on_rank0(gather_full_state(trainer.model.module, "param"))
    trainer.close()
    return {"losses": losses, "removals": removals, "params": params} if dist.get_rank() == 0 else None
