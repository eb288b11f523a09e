"""Workers for tests/distributed/test_speed_settings.py (importable by spawn)."""

from __future__ import annotations


def built_settings_and_losses(cfg_dict: dict, steps: int):
    """Train `steps` steps (pruning as configured); on rank 0: what megatron's built objects
    say about the speed settings, the losses, the removals and the final full params."""
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.sharding.full_state import gather_full_state
    from pap.trainer import Trainer

    trainer = Trainer(config_from_dict(cfg_dict))
    losses = [trainer.train_step().loss for _ in range(steps)]
    trainer.sync_params()
    params = gather_full_state(trainer.model.module, "param")
    ddp, config = trainer.model.ddp_config, trainer.config
    built = {
        "overlap_grad_reduce": ddp.overlap_grad_reduce, "overlap_param_gather": ddp.overlap_param_gather,
        "bucket_size": ddp.bucket_size, "buckets": len(trainer.model.buffers[0].buckets),
        "forward_pre_hooks": trainer.model.use_forward_hook,
        "recompute_granularity": config.recompute_granularity, "recompute_method": config.recompute_method,
        "recompute_num_layers": config.recompute_num_layers,
        "gradient_accumulation_fusion": config.gradient_accumulation_fusion,
        "apply_rope_fusion": config.apply_rope_fusion, "bias_activation_fusion": config.bias_activation_fusion,
    }
    removals = [(r.kind, r.indices) for r in trainer.callback("pruning").removals] if trainer.callback("pruning") else []
    trainer.close()
    if dist.get_rank() != 0:
        return None
    return {"built": built, "losses": losses, "removals": removals, "params": params}
