"""Functions run on every rank by `tests.helpers.run_distributed` (importable by spawn)."""

from __future__ import annotations

import torch


def grads_and_losses(cfg_dict: dict, steps: int):
    """First-batch loss, full params and grads (no update), then `steps` training losses.

    Returns a dict on global rank 0 and None elsewhere.
    """
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.sharding.full_state import gather_full_state
    from pap.trainer import Trainer

    trainer = Trainer(config_from_dict(cfg_dict))
    trainer.model.zero_grad_buffer()
    loss = trainer.forward_backward(trainer.train_batches.microbatches(0))
    params = gather_full_state(trainer.model.module, "param")
    grads = gather_full_state(trainer.model.module, "grad")
    params, grads = _everything_on_rank0(params), _everything_on_rank0(grads)
    losses = [trainer.train_step().loss for _ in range(steps)]
    if dist.get_rank() != 0:
        return None
    return {"loss": loss, "params": params, "grads": grads, "losses": losses}


def _everything_on_rank0(tensors: dict) -> dict:
    """Union of the dicts held by every rank (each PP group holds its stages' tensors)."""
    import torch.distributed as dist

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, tensors)
    merged = {}
    for part in gathered:
        merged.update(part)
    return merged


def model_shapes(cfg_dict: dict):
    """(parameter count of the built stage, Arch.num_params()) summed over PP stages on rank 0."""
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.sharding.full_state import gather_full_state
    from pap.trainer import Trainer

    trainer = Trainer(config_from_dict(cfg_dict))
    full = gather_full_state(trainer.model.module, "param")
    count = sum(t.numel() for t in full.values())
    return count, trainer.arch.num_params()


def pruning_run(cfg_dict: dict, steps: int):
    """Train `steps` steps with pruning on; on rank 0: removals, final Arch, weights, losses."""
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.sharding.full_state import gather_full_state
    from pap.trainer import Trainer

    trainer = Trainer(config_from_dict(cfg_dict))
    losses = [trainer.train_step().loss for _ in range(steps)]
    params = _everything_on_rank0(gather_full_state(trainer.model.module, "param"))
    if dist.get_rank() != 0:
        return None
    return {"removals": [(r.kind, r.indices) for r in trainer.pruning.removals], "arch": trainer.arch.to_json(),
            "params": params, "losses": losses}
