"""Functions run on every rank by `tests.helpers.run_distributed` (importable by spawn)."""

from __future__ import annotations


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
    return {"removals": [(r.kind, r.indices) for r in trainer.callback("pruning").removals], "arch": trainer.arch.to_json(),
            "params": params, "losses": losses, "scores": [r.score for r in trainer.callback("pruning").removals],
            "num_params": trainer.arch.num_params()}


def removal_matches_unpruned(cfg_dict: dict, kind: str, indices: tuple):
    """Zero a group, then (A) step and prune, or (B) prune and step. On rank 0:
    validation losses of the zeroed and the pruned model, and A's and B's weights."""
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.pruning.remove import prune_state
    from pap.pruning.select import Removal
    from pap.sharding.full_state import gather_full_state
    from pap.sharding.training_state import TrainingState
    from pap.prune_hook import remove_groups
    from pap.trainer import Trainer

    removal = Removal(kind, tuple(indices), 0.0, ())
    runs = []
    for _ in range(2):  # two identical trainers, trained identically
        trainer = Trainer(config_from_dict(cfg_dict))
        for _ in range(2):
            trainer.train_step()
        full = gather_full_state(trainer.model.module, "param")
        d = trainer.arch.head_dim
        for layer, index in enumerate(removal.indices):
            if kind == "attn":
                full[f"decoder.layers.{layer}.self_attention.linear_proj.weight"][:, index * d:(index + 1) * d] = 0
            else:
                full[f"decoder.layers.{layer}.mlp.linear_fc2.weight"][:, index] = 0
        TrainingState(trainer.model.module, trainer.optimizer).write({"param": full})  # masters follow
        runs.append(trainer)
    a, b = runs
    arch_before = a.arch
    zeroed_loss = a.evaluate()
    a.train_step()
    weights_a = prune_state(_everything_on_rank0(gather_full_state(a.model.module, "param")), arch_before, removal)
    remove_groups(b, [removal])
    pruned_loss = b.evaluate()
    b.train_step()
    weights_b = _everything_on_rank0(gather_full_state(b.model.module, "param"))
    if dist.get_rank() != 0:
        return None
    return {"zeroed_loss": zeroed_loss, "pruned_loss": pruned_loss, "a": weights_a, "b": weights_b}


def obs_rounds_against_least_squares(cfg_dict: dict, steps: int):
    """Train with `prune.update: obs` at one rank, capturing every block's whole input of each
    step with the test's own hooks; after each round, compare each updated weight with the
    least-squares optimum for all the columns the round took, computed here in plain torch
    (equal to the sequential updates without dampening). Returns
    [(kinds of the round, block, removals touching it, rel. error)]."""
    import torch

    from pap.callbacks import Callback
    from pap.config import config_from_dict
    from pap.pruning.remove import kept_indices
    from pap.sharding.full_state import gather_full_state
    from pap.sharding.hessians import module_of, stage_blocks
    from pap.sharding.hessians import param_name
    from pap.trainer import Trainer

    trainer = Trainer(config_from_dict(cfg_dict))
    captured, before = {}, {}

    def hook(key):
        def record(module, args, output):
            if module.training and torch._C._current_graph_task_id() == -1:
                x = args[0].detach().double()
                captured.setdefault(key, []).append(x.reshape(-1, x.shape[-1]))
        return record

    class Snapshot(Callback):  # runs before the pruning component: the weights the round starts from
        priority = 1

        def post_step(self, tr, result):
            before["params"] = {k: v.double() for k, v in gather_full_state(tr.model.module, "param").items()}
            before["arch"] = tr.arch

    trainer.callbacks.insert(0, Snapshot())
    results = []
    for _ in range(steps):
        blocks = stage_blocks(trainer.model.module, trainer.arch)
        handles = [module_of(trainer.model.module, key).register_forward_hook(hook(key)) for key in blocks]
        captured.clear()
        done = len(trainer.callback("pruning").removals)
        trainer.train_step()
        for handle in handles:
            handle.remove()
        new = trainer.callback("pruning").removals[done:]
        if not new:
            continue
        after = gather_full_state(trainer.model.module, "param")
        for key in blocks:
            name = param_name(key)
            weight = before["params"][name]
            rows, columns = kept_indices(name, weight.shape, before["arch"], new)
            if columns is None:
                continue  # the round took none of this layer's input columns
            inputs = torch.cat(captured[key]).T  # [n, tokens]
            want = torch.linalg.lstsq(inputs[columns].T, (weight @ inputs).T).solution.T
            if rows is not None:
                want = want[rows]
            got = after[name].double()
            touching = sum(1 for r in new if kept_indices(name, weight.shape, before["arch"], [r])[1] is not None)
            results.append(([r.kind for r in new], key, touching, ((got - want).norm() / want.norm()).item()))
    return results


def obs_pruning_run(cfg_dict: dict, steps: int):
    """`pruning_run`, plus the OBS errors of every round ((with update, without) per removal)."""
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.sharding.full_state import gather_full_state
    from pap.trainer import Trainer

    trainer = Trainer(config_from_dict(cfg_dict))
    losses, errors = [], []
    for _ in range(steps):
        done = len(trainer.callback("pruning").removals)
        losses.append(trainer.train_step().loss)
        if len(trainer.callback("pruning").removals) > done and trainer.callback("pruning").obs is not None:
            obs = trainer.callback("pruning").obs
            errors += [(obs.errors[kind], obs.plain_errors[kind]) for kind in sorted(obs.errors)]
    params = _everything_on_rank0(gather_full_state(trainer.model.module, "param"))
    if dist.get_rank() != 0:
        return None
    return {"removals": [(r.kind, r.indices) for r in trainer.callback("pruning").removals], "arch": trainer.arch.to_json(),
            "params": params, "losses": losses, "errors": errors}
