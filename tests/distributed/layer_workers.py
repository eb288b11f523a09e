"""Per-rank functions for the tests of layers pruned to different widths (run by
`tests.helpers.run_distributed`)."""

from __future__ import annotations


def thin_layer_and_train(cfg_dict: dict, heads_left: int, ffn_left: int, steps: int, heads=None):
    """Cut layer 0 alone down to `heads_left` query heads and `ffn_left` FFN channels (the
    other layers untouched, removals with index -1 elsewhere), train `steps` steps, save a
    checkpoint. `heads`: which head index each attn removal takes (default: 0 every time).
    Returns (Arch JSON, losses) on rank 0."""
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.pruning.select import UNTOUCHED, Removal
    from pap.prune_hook import remove_groups
    from pap.trainer import Trainer

    trainer = Trainer(config_from_dict(cfg_dict))
    arch = trainer.arch
    rest = (UNTOUCHED,) * (arch.num_layers - 1)
    heads = heads or [0] * (arch.num_heads(0) - heads_left)
    removals = [Removal("attn", (head,) + rest, 0.0, ()) for head in heads]
    removals += [Removal("ffn", (0,) + rest, 0.0, ()) for _ in range(arch.ffn[0] - ffn_left)]
    remove_groups(trainer, removals)
    losses = [trainer.train_step().loss for _ in range(steps)]
    trainer.save()
    return (trainer.arch.to_json(), losses) if dist.get_rank() == 0 else None
