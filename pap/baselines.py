"""The baselines pruning-aware pretraining is compared with, as weights-only checkpoints.

    python -m pap.baselines oneshot --config CFG --source CKPT --target 0.35 --calib-batches 8 --out OUT
    python -m pap.baselines scratch --config CFG --arch-from CKPT --out OUT

* `oneshot`: post-training pruning in one go, LLM-Pruner style, with pap's own metric and
  minimal groups. The saliency of the source model is accumulated over `--calib-batches`
  global batches of the training data (gradients, no update), then groups are removed
  one after another, each choice seeing the scores of the groups still there, until the
  parameter target. The scores are never recomputed: that is what separates it from
  pruning-aware pretraining, where training and removal interleave. The removals are
  listed in `OUT/pruning_events.jsonl`, in the form of a pruning-aware run's event log.
* `scratch`: the architecture of a checkpoint (e.g. a pruning-aware run's final shape),
  freshly initialised as any pap model is (`pap.init`, by seed and parameter name), to
  train from scratch.

Both write a weights-only checkpoint that `checkpoint.init_from` starts a run from. They
run in one process (TP=1), like the converters. The config supplies the data, the
metric (`prune.metric`), `prune.normalize`, the floors (`prune.min_*`) and the seed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence, Union

from pap import checkpoint
from pap.config import PapConfig, load_config
from pap.errors import PapError, exit_status


def _one_process_config(config: Union[str, PapConfig], overrides: Sequence[str] = ()) -> PapConfig:
    """`config` (a YAML path, or a PapConfig) at TP=1, PP=1, with the plain optimizer."""
    if isinstance(config, PapConfig):
        if overrides:
            raise ValueError("overrides apply to a config file, not to a PapConfig")
        cfg = config
    else:
        cfg = load_config(config, list(overrides))
    return replace(cfg, parallel=replace(cfg.parallel, tp=1, pp=1, distributed_optimizer=False))


def oneshot(config: Union[str, PapConfig], source: str, target: float, calib_batches: int, out: str,
            overrides: Sequence[str] = ()) -> dict:
    """Prune `source` to `target` parameters in one shot and save the result as weights only.

    `target` is a count (> 1) or a fraction of the source's parameters (<= 1), as
    `prune.target_params`. Returns a summary: `params`, `arch`, `removals` (the
    `Removal`s in order), `loss_before` and `loss_after` (validation loss of the source
    and of the pruned model, on the config's validation batches; None without them).
    """
    if not 0 < target:
        raise PapError(f"--target must be a fraction in (0, 1] or a parameter count > 1, got {target}")
    if calib_batches < 1:
        raise PapError(f"--calib-batches must be at least 1, got {calib_batches}")
    # The trainer and megatron-core (heavy) load after the arguments are checked.
    from pap.distributed import shutdown
    from pap.prune_hook import run_round
    from pap.pruning.round_plan import SELECTION_MODES, RoundSettings, plan_round
    from pap.pruning_log import removal_event
    from pap.sharding.reduce_saliency import global_scores
    from pap.trainer import Trainer

    checkpoint.read(source)  # a clear error before megatron starts, if it is not a checkpoint
    cfg = _one_process_config(config, overrides)
    # The calibration batches are the first global batches of the training split; the
    # datasets are sized by train.iters, so it must cover them.
    cfg = replace(cfg, checkpoint=replace(cfg.checkpoint, dir=None, init_from=source),
                  train=replace(cfg.train, iters=max(cfg.train.iters, calib_batches)),
                  prune=replace(cfg.prune, enabled=True, target_params=target))
    trainer = Trainer(cfg)
    try:
        hook = trainer.callback("pruning")
        loss_before = trainer.evaluate()
        # Saliency as in a pruning-aware window of `calib_batches` steps, without updates.
        for batch in range(calib_batches):
            trainer.model.zero_grad_buffer()
            trainer.forward_backward(trainer.train_batches.microbatches(batch * cfg.train.global_batch_size))
            hook.post_backward(trainer)
        scores = global_scores(hook.accumulator, trainer.arch)
        # One round that goes all the way: uniform removals (Eq. 10), no step limit, no alignment.
        settings = replace(RoundSettings.from_config(cfg.prune), prune_steps=float("inf"))
        plan = plan_round(scores, trainer.arch, settings, hook.target, SELECTION_MODES["uniform"], align=False)
        if plan.end.num_params() > hook.target:
            raise PapError(f"cannot prune {source} to {hook.target:,} parameters: every dimension is at its "
                           f"floor at {plan.end.num_params():,}; lower the prune.min_* floors")
        chosen = plan.removals
        events = [removal_event(0, 0, removal, after) for removal, after in plan.steps]
        run_round(trainer, plan)
        loss_after = trainer.evaluate()
        checkpoint.save(out, 0, 0, trainer.arch, trainer.model.module, None, None, trainer.layout, cfg.to_dict())
        with open(Path(out) / "pruning_events.jsonl", "w") as f:
            f.writelines(json.dumps(event) + "\n" for event in events)
        return {"params": trainer.arch.num_params(), "arch": trainer.arch, "removals": chosen,
                "loss_before": loss_before, "loss_after": loss_after}
    finally:
        shutdown()


def scratch(config: Union[str, PapConfig], arch_from: str, out: str, overrides: Sequence[str] = ()) -> dict:
    """A freshly initialised model of `arch_from`'s architecture, saved as weights only.

    Returns `params` and `arch`. The weights are what any pap run of that shape starts
    from with the config's `train.seed` and `model.init_std`.
    """
    # megatron-core (heavy) loads only when a model is built.
    from pap.distributed import init_distributed, shutdown
    from pap.model import build_model

    cfg = _one_process_config(config, overrides)
    arch = checkpoint.read(arch_from).arch
    init_distributed(1, 1, cfg.train.seed)
    try:
        model = build_model(arch, cfg)
        layout = {"tp": 1, "pp": 1, "dp": 1, "distributed_optimizer": False}
        checkpoint.save(out, 0, 0, arch, model, None, None, layout, cfg.to_dict())
        return {"params": arch.num_params(), "arch": arch}
    finally:
        shutdown()


def _loss(value) -> str:
    return "n/a (no validation batches)" if value is None or not math.isfinite(value) else f"{value:.4f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pap.baselines", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("oneshot", help="one-shot post-training pruning of a checkpoint")
    one.add_argument("--source", required=True, help="checkpoint to prune")
    one.add_argument("--target", type=float, required=True, help="parameters (> 1) or fraction of the source (<= 1)")
    one.add_argument("--calib-batches", type=int, default=8, help="global batches whose saliency decides")
    new = sub.add_parser("scratch", help="fresh weights in the architecture of a checkpoint")
    new.add_argument("--arch-from", required=True, help="checkpoint whose Arch to build")
    for p in (one, new):
        p.add_argument("--config", required=True, help="the run's YAML config (data, metric, floors, seed)")
        p.add_argument("--out", required=True, help="directory for the weights-only checkpoint")
        p.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parser.parse_args(argv)

    def command():
        if args.command == "oneshot":
            result = oneshot(args.config, args.source, args.target, args.calib_batches, args.out, args.overrides)
            print(f"oneshot: {len(result['removals'])} removals -> {result['params']:,} parameters; validation loss "
                  f"{_loss(result['loss_before'])} before, {_loss(result['loss_after'])} after; wrote {args.out}")
        else:
            result = scratch(args.config, args.arch_from, args.out, args.overrides)
            print(f"scratch: {result['params']:,} parameters, fresh weights; wrote {args.out}")

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
