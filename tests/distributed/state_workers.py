"""Per-rank functions for the training-state tests (bf16 masters, Adam step, leaks, devices)."""

from __future__ import annotations

import torch


class ParamGroupStepAdam(torch.optim.Optimizer):
    """Adam that keeps its step count in `param_groups`, as Transformer Engine's and apex's
    FusedAdam do (megatron uses those on GPU); plain torch, so it runs on CPU.

    Accepts megatron's FusedAdam keyword `adam_w_mode` (decoupled weight decay when True).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, adam_w_mode=True):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.adam_w_mode = adam_w_mode

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1  # FusedAdam: one count per group
            step = group["step"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                grad = p.grad
                if group["weight_decay"]:
                    if self.adam_w_mode:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    else:
                        grad = grad + group["weight_decay"] * p
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt().add_(group["eps"])
                p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1 ** step))
        return None


def use_param_group_step_adam() -> None:
    """Make megatron build `ParamGroupStepAdam` where it would build FusedAdam on a GPU."""
    import megatron.core.optimizer as optimizer_module

    optimizer_module.USING_PYTORCH_OPTIMIZER = False
    optimizer_module.Adam = ParamGroupStepAdam


def _state(trainer):
    from pap.sharding.training_state import TrainingState

    return TrainingState(trainer.model.module, trainer.optimizer)


def round_keeps_training_state(cfg_dict: dict, kind: str, indices: tuple, fused_adam: bool = False):
    """Train 3 steps, gather masters, moments, params and Adam step, remove one group, gather again.

    On rank 0: before (pruned by the test's oracle) and after, for bit comparison.
    """
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.pruning.remove import prune_state
    from pap.pruning.select import Removal
    from pap.prune_hook import remove_groups
    from pap.sharding.training_state import FIELDS
    from pap.trainer import Trainer

    if fused_adam:
        use_param_group_step_adam()
    trainer = Trainer(config_from_dict(cfg_dict))
    for _ in range(3):
        trainer.train_step()
    removal = Removal(kind, tuple(indices), 0.0, ())
    arch = trainer.arch
    before = _state(trainer).gather(FIELDS)
    step_before = _state(trainer).step()
    remove_groups(trainer, [removal])
    after = _state(trainer).gather(FIELDS)
    step_after = _state(trainer).step()
    expected = {field: prune_state(tensors, arch, removal) for field, tensors in before.items()}
    inner = _state(trainer).inner_optimizers
    group_steps = sorted({g.get("step") for o in inner for g in o.param_groups if "step" in g})
    next_loss = trainer.train_step().loss
    step_next = _state(trainer).step()
    if dist.get_rank() != 0:
        return None
    return {"expected": expected, "after": after, "steps": (step_before, step_after, step_next),
            "group_steps": group_steps, "next_loss": next_loss,
            "optimizer": sorted({type(o).__name__ for o in getattr(trainer.optimizer, "chained_optimizers",
                                                                      [trainer.optimizer])}), "inner": type(inner[0]).__name__}


def one_step_from_source(cfg_dict: dict):
    """Start from `checkpoint.init_from`, gather masters and params before and after one step (rank 0)."""
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.trainer import Trainer

    trainer = Trainer(config_from_dict(cfg_dict))
    before = _state(trainer).gather(("param", "master"))
    lr = trainer.optimizer.param_groups[0]["lr"]  # the first step's
    loss = trainer.train_step().loss
    after = _state(trainer).gather(("param", "master"))
    if dist.get_rank() != 0:
        return None
    return {"before": before, "after": after, "loss": loss, "lr": lr}


def live_training_objects(cfg_dict: dict, rounds: int):
    """Train with a pruning round after every step until `rounds` rounds ran; then count the
    live DDP wrappers, megatron optimizers and model stages, and measure this process's RSS.

    With `rounds=0`, a fresh trainer of the checkpointed final shape (`checkpoint.init_from`)
    takes one step: the baseline RSS.
    """
    import gc

    import psutil

    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.optimizer import MegatronOptimizer

    from pap.config import config_from_dict
    from pap.trainer import Trainer

    trainer = Trainer(config_from_dict(cfg_dict))
    trainer.train_step()
    while rounds and len(trainer.callback("pruning").removals) < rounds:
        trainer.train_step()
    gc.collect()
    live = {cls.__name__: sum(isinstance(o, cls) for o in gc.get_objects())
            for cls in (DistributedDataParallel, MegatronOptimizer, GPTModel)}
    rss = psutil.Process().memory_info().rss
    if rounds and cfg_dict["checkpoint"].get("dir"):
        trainer.save()  # the final shape, for the fresh trainer to start from
    return {"live": live, "rss": rss, "removals": len(trainer.callback("pruning").removals) if trainer.callback("pruning") else 0,
            "params": trainer.arch.num_params(), "arch": trainer.arch.to_json()}


def pruning_without_tensor_objects(cfg_dict: dict, steps: int):
    """`steps` pruning steps while every object collective is checked to carry no tensor.

    Returns the removals on rank 0 and the offending calls (none expected) on every rank.
    """
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.trainer import Trainer

    offending = []
    original = dist.all_gather_object

    def holds_tensor(obj) -> bool:
        if isinstance(obj, torch.Tensor):
            return True
        if isinstance(obj, dict):
            return any(holds_tensor(k) or holds_tensor(v) for k, v in obj.items())
        if isinstance(obj, (list, tuple, set)):
            return any(holds_tensor(v) for v in obj)
        return False

    def checked(output, obj, group=None):
        if holds_tensor(obj):
            import traceback

            offending.append("".join(traceback.format_stack(limit=6)))
        return original(output, obj, group=group)

    dist.all_gather_object = checked
    trainer = Trainer(config_from_dict(cfg_dict))
    for _ in range(steps):
        trainer.train_step()
    return {"removals": [(r.kind, r.indices) for r in trainer.callback("pruning").removals], "offending": offending}


def local_round_equals_oracle(cfg_dict: dict, rounds: list):
    """Two identical trainers; each round goes through `execute_round` on one and the
    gather-and-rebuild oracle on the other, then both train a step. On rank 0: both full
    states (params, masters, moments) and Adam steps after every round, and both losses,
    plus the bytes each rank sent per round."""
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.pruning.select import Removal
    from pap.prune_hook import remove_groups
    from pap.sharding.reshard import gather_and_rebuild
    from pap.sharding.training_state import FIELDS
    from pap.trainer import Trainer

    local, oracle = Trainer(config_from_dict(cfg_dict)), Trainer(config_from_dict(cfg_dict))
    for trainer in (local, oracle):
        for _ in range(2):
            trainer.train_step()
    results, sent = [], []
    for removals in rounds:
        chosen = [Removal(kind, tuple(indices), 0.0, ()) for kind, indices in removals]
        sent.append(remove_groups(local, chosen).stats.bytes_sent)
        remove_groups(oracle, chosen, executor=gather_and_rebuild)
        states = [_state(t).gather(FIELDS) for t in (local, oracle)]
        steps = [_state(t).step() for t in (local, oracle)]
        losses = [t.train_step().loss for t in (local, oracle)]
        results.append({"states": states, "steps": steps, "losses": losses, "arch": local.arch.to_json()})
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, sent)
    return {"rounds": results, "sent": everyone} if dist.get_rank() == 0 else None
