"""Pruning-aware pretraining as a training component: k gradient steps, then p removals, until the target.

Each backward pass adds the step's saliency to the running sums; after every
`prune.grad_steps` optimizer steps the sums are reduced across ranks, a round is planned
(`pap.pruning.round_plan`) and carried out on the sharded training state
(`pap.sharding.reshard`), after EfficientLLM-B's update of the surviving weights when
`prune.update` is `obs` (docs/METHOD.md §5-6). When the model is at or below
`prune.target_params`, the run goes on as plain pretraining. Every removal is appended to
`<checkpoint.dir>/pruning_events.jsonl`.

The component owns its windows (saliency sums; layer-input Hessians for `obs`; layer
cosines for `adaptive`) and their checkpoint parts: its rank state (`state_dict`) and a
layout-free copy (`pap.sharding.portable_window`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional, Sequence

from pap.callbacks import Callback
from pap.checkpoint import iteration_dir, tag
from pap.config import PruneConfig
from pap.errors import PapError
from pap.pruning.accumulator import SaliencyAccumulator
from pap.pruning.layer_cosine import LayerCosine
from pap.pruning.round_plan import SELECTION_MODES, RoundPlan, RoundSettings, plan_round
from pap.pruning.select import Removal
from pap.pruning_log import LINES_PER_ROUND, EventLog, removal_event, shape_line, shape_summary
from pap.sharding.distopt import owned_ranges
from pap.sharding.hessians import HessianWindow
from pap.sharding.obs_round import ObsStats, apply_obs
from pap.sharding.portable_window import load_window, read_window, save_window
from pap.sharding.reduce_saliency import global_layer_cosine, global_scores
from pap.sharding.reshard import Rebuild, RoundResult, execute_round
from pap.sharding.training_state import TrainingState


def check_floors_fit(cfg: PruneConfig, source) -> None:
    """The `prune.min_*` floors must fit the model the run starts from (`source`, an Arch:
    the configured model or `checkpoint.init_from`'s); a floor above its width is refused."""
    # Against the widest layer: a source pruned unevenly may have layers below a floor already.
    widths = {"prune.min_heads": ("query heads", max(sum(layer) for layer in source.heads_per_group)),
              "prune.min_kv_heads": ("KV heads", max(len(layer) for layer in source.heads_per_group)),
              "prune.min_ffn": ("FFN width", max(source.ffn)),
              "prune.min_hidden": ("hidden size", source.hidden_size)}
    for key, (what, width) in widths.items():
        floor = getattr(cfg, key.split(".")[1])
        if floor > width:
            raise PapError(f"{key} ({floor}) is larger than the starting model's {what} ({width}): a floor "
                           f"above the model's width cannot be kept; choose at most {width}")


def target_params(cfg: PruneConfig, source_params: int) -> int:
    """`prune.target_params` as a parameter count (a fraction refers to the source model)."""
    return int(cfg.target_params if cfg.target_params > 1 else cfg.target_params * source_params)


def restored_removals(removals: Sequence[dict]) -> List[Removal]:
    """Removals saved in `Removal.to_dict` form."""
    return [Removal(r["kind"], tuple(r["indices"]), r["score"], tuple(r["candidates"][k] for k in ("attn", "ffn", "stem")))
            for r in removals]


def run_round(trainer, plan: RoundPlan, rebuild: Optional[Rebuild] = None, executor=execute_round) -> RoundResult:
    """Carry out `plan` on `trainer`'s model and optimizer and install what the round
    returns (collective). `rebuild` defaults to the trainer's own; `executor` is
    `execute_round` or its oracle `gather_and_rebuild`."""
    trainer.sync_params()
    result = executor(trainer.model, trainer.optimizer, TrainingState(trainer.model.module, trainer.optimizer), plan,
                      rebuild or (lambda arch, fill: trainer.rebuild(arch, fill=fill)))
    trainer.model, trainer.optimizer, trainer.arch = result.model, result.optimizer, result.arch
    return result


def remove_groups(trainer, removals: Sequence[Removal], executor=execute_round) -> RoundResult:
    """Remove `removals` (in order) from `trainer`'s model and optimizer on every rank, as a
    round would (collective); for tools and tests that choose the removals themselves."""
    return run_round(trainer, RoundPlan.of(trainer.arch, removals), executor=executor)


class PruningHook(Callback):
    """Owns the pruning windows and decides when and what to remove."""

    name = "pruning"

    def __init__(self, cfg: PruneConfig, events_file: Optional[str] = None):
        self.cfg = cfg
        self.settings = RoundSettings.from_config(cfg)
        self.mode = SELECTION_MODES[cfg.layers]
        self.floors = self.settings.floors
        self.events_file = events_file
        self.accumulator = SaliencyAccumulator(
            cfg.metric, coupled=cfg.layers == "adaptive" and cfg.adapt_score == "coupled")
        self.target = 0
        """`prune.target_params` as a count (set up from the run's source model)."""
        self.removals: List[Removal] = []
        self._new_removals: List[Removal] = []
        self.reached_now = False
        """Set by the round that reaches the target; `on_step_logged` saves the `pruned` checkpoint."""
        self.stuck_at_floors = False
        """Set once a round found nothing removable above the target (reported once)."""
        self.round_seconds = 0.0
        """Wall time of the last pruning round (reduction, choice, removal and rebuild)."""
        self._round_ran = False
        self.hessians: Optional[HessianWindow] = None
        """`prune.update: obs`: the window's layer-input Hessians (`pap.sharding.hessians`)."""
        self.obs: Optional[ObsStats] = None
        """The last round's `ObsStats` (errors and time of the updates)."""
        self.cosine: Optional[LayerCosine] = LayerCosine() if self.mode.needs_layer_cosine else None
        """`prune.layers: adaptive`: the window's per-layer input/output cosine sums."""
        self.log: Optional[EventLog] = None

    # ---- events ----------------------------------------------------------------------------
    def setup(self, trainer) -> None:
        check_floors_fit(self.cfg, trainer.source_arch)
        self.target = target_params(self.cfg, trainer.source_arch.num_params())
        # The published adaptive rule measures sparsity against the source widths.
        self.settings = RoundSettings.from_config(self.cfg, trainer.source_arch)
        self.log = EventLog(self.events_file, trainer.topo.rank == 0)
        if self.cfg.update == "obs":
            self.hessians = HessianWindow(self.cfg.hessian_tokens, trainer.cfg.train.global_batch_size,
                                          trainer.cfg.data.seq_length, trainer.topo.tp, trainer.topo.dp,
                                          holdout=self.cfg.hessian_holdout)
            if self.active(trainer):
                self.hessians.attach(trainer.model.module, trainer.arch)
        if self.cosine is not None and self.active(trainer):
            self._attach_cosine(trainer)
        # Keep the events up to the checkpoint resumed from; a fresh start (a run killed
        # before its first checkpoint, started again) empties the log.
        self.log.truncate(trainer.iteration)

    def restore(self, trainer, saved: Optional[dict], checkpoint_dir: Path) -> None:
        """The windows of the checkpoint: this rank's own state when the layout maps onto the
        saved one (bit-exact), else its share of the layout-free copy."""
        if saved is not None:
            self.load_state_dict(saved)
            return
        window = read_window(checkpoint_dir)
        if window is not None:
            self.restore_removals(window["target"], window["removals"])
        if window is not None and load_window(window, checkpoint_dir, self.accumulator, self.cosine,
                                              trainer.model.module, trainer.optimizer, trainer.arch):
            if trainer.topo.rank == 0:
                print(f"pap: saliency window restored at a new layout ({self.accumulator.steps} steps)", flush=True)
                if self.hessians is not None:
                    # Each H lives whole on one rank of the saved layout; the removals stay those of
                    # the saliency window, the round's update sees the steps from here on.
                    print("pap: the Hessian window (prune.update=obs) restarts at a new layout", flush=True)
        elif trainer.topo.rank == 0:
            print("pap: the saliency window restarts (not saved, or saved for another metric)", flush=True)

    def on_train_start(self, trainer) -> None:
        if not self.active(trainer) and not self.removals:
            trainer.progress.print(f"pap: the model has no more than prune.target_params ({self.target:,}) "
                                   f"parameters already; training without pruning")

    def post_backward(self, trainer) -> None:
        if self.active(trainer):
            self.accumulator.update(trainer.model.module, trainer.arch.head_dim, owned_ranges(trainer.optimizer))
            if self.hessians is not None:
                self.hessians.end_step()

    def post_step(self, trainer, step) -> None:
        if not self.active(trainer) or self.accumulator.steps < self.cfg.grad_steps:
            return
        start = time.time()
        scores = global_scores(self.accumulator, trainer.arch, dp_sharded=trainer.cfg.parallel.distributed_optimizer)
        cosine = global_layer_cosine(self.cosine, trainer.arch) if self.mode.needs_layer_cosine else None
        plan = plan_round(scores, trainer.arch, self.settings, self.target, self.mode, cosine)
        notes = list(plan.notes)
        if plan and self.hessians is not None:
            trainer.sync_params()
            self.obs = apply_obs(trainer.model, TrainingState(trainer.model.module, trainer.optimizer),
                                 self.hessians, plan, self.cfg.hessian_damp)
            # The round solves each layer once for all its removals: the errors are per kind.
            notes = [{**note, "obs_error": self.obs.errors.get(removal.kind),
                      "obs_error_plain": self.obs.plain_errors.get(removal.kind)}
                     for removal, note in zip(plan.removals, notes)]
        if plan:
            run_round(trainer, plan)
        self._record_round(trainer, plan, notes)
        self.reached_now = not self.active(trainer)
        self._next_window(trainer, rebuilt=bool(plan))
        if not plan:  # every dimension at its floor above the target
            if not self.stuck_at_floors and trainer.topo.rank == 0:
                print(f"pap: prune.target_params ({self.target:,}) cannot be reached: every dimension is at its "
                      f"prune.min_* floor at {trainer.arch.num_params():,} parameters; training goes on at this "
                      f"size (lower the floors to prune further)", flush=True)
            self.stuck_at_floors = True
            return
        self.round_seconds = time.time() - start
        self._round_ran = True
        if trainer.topo.rank == 0:
            print(f"pruning round at iteration {trainer.iteration}: {len(plan.steps)} removal(s) in "
                  f"{self.round_seconds:.2f} s", flush=True)

    def on_step_logged(self, trainer) -> None:
        if self.reached_now:
            self.reached_now = False
            self._target_reached(trainer)

    def scalars(self, trainer) -> dict:
        """TensorBoard `pruning/*` scalars for this step (shape; saliencies when a round ran)."""
        arch = trainer.arch
        layers = range(arch.num_layers)
        values = {"pruning/params": arch.num_params(),
                  "pruning/heads": sum(arch.num_heads(l) for l in layers) / arch.num_layers,
                  "pruning/kv_heads": sum(arch.num_kv_heads(l) for l in layers) / arch.num_layers,
                  "pruning/ffn": sum(arch.ffn) / arch.num_layers, "pruning/hidden": arch.hidden_size}
        if self.cfg.layers != "uniform":  # layers differ: each layer's width
            for layer in layers:
                values[f"pruning/heads_layer{layer}"] = arch.num_heads(layer)
                values[f"pruning/ffn_layer{layer}"] = arch.ffn[layer]
        # Which types were removed: running counts per kind (a step's increments show that round's choice).
        for kind in ("attn", "ffn", "stem"):
            values[f"pruning/removed_{kind}"] = sum(r.kind == kind for r in self.removals)
        if self._round_ran:
            values["pruning/round_s"] = self.round_seconds
            if self.obs is not None:
                values["pruning/obs_s"] = self.obs.seconds
                for kind, value in self.obs.errors.items():
                    values[f"pruning/obs_error_{kind}"] = value
                    values[f"pruning/obs_error_plain_{kind}"] = self.obs.plain_errors[kind]
            self._round_ran = False
        if self._new_removals:
            for kind, value in zip(("attn", "ffn", "stem"), self._new_removals[0].candidates):
                if value != float("inf"):
                    values[f"pruning/saliency_{kind}"] = value
            self._new_removals = []
        return values

    def progress_note(self, trainer) -> str:
        return shape_summary(trainer.arch)

    def state_dict(self) -> dict:
        """The windows and the removals so far (this rank's share)."""
        state = {"accumulator": self.accumulator.state_dict(), "target": self.target,
                 "removals": [r.to_dict() for r in self.removals]}
        if self.hessians is not None:
            state["hessians"] = self.hessians.state_dict()
        if self.cosine is not None:
            state["cosine"] = self.cosine.state_dict()
        return state

    def write_checkpoint(self, trainer, directory: Path) -> None:
        """The layout-free copy of the windows (`pap.sharding.portable_window`)."""
        save_window(directory, self.accumulator, self.cosine, self.target, self.removals, trainer.model.module,
                    trainer.optimizer, trainer.arch, trainer.cfg.parallel.distributed_optimizer)

    # ---- state -----------------------------------------------------------------------------
    def active(self, trainer) -> bool:
        return trainer.arch.num_params() > self.target

    def load_state_dict(self, state: dict) -> None:
        """Restore this rank's own saved state (same layout as the save)."""
        self.accumulator.load_state_dict(state["accumulator"])
        self.restore_removals(state["target"], state["removals"])
        if self.hessians is not None and "hessians" in state:
            self.hessians.load_state_dict(state["hessians"])
        if self.cosine is not None and "cosine" in state:
            self.cosine.load_state_dict(state["cosine"])

    def restore_removals(self, target: int, removals: List[dict]) -> None:
        """The target and the removals so far, as saved (`Removal.to_dict` form)."""
        self.target = target
        self.removals = restored_removals(removals)

    def shape_summary(self, trainer) -> str:
        return shape_summary(trainer.arch)

    # ---- internals -------------------------------------------------------------------------
    def _attach_cosine(self, trainer) -> None:
        from megatron.core import parallel_state as ps  # megatron-core: heavy, and needs its parallel state

        counts = trainer.cfg.parallel.sequence_parallel or ps.get_tensor_model_parallel_rank() == 0
        self.cosine.attach(trainer.model.module, counts)

    def _next_window(self, trainer, rebuilt: bool) -> None:
        """Restart the windows' sums (saliency, layer cosines, Hessians). The hooks follow a
        rebuilt model, and go once the target is reached (plain pretraining pays nothing)."""
        self.accumulator.reset()
        hooked = [(self.cosine, lambda: self._attach_cosine(trainer)),
                  (self.hessians, lambda: self.hessians.attach(trainer.model.module, trainer.arch))]
        for window, attach in hooked:
            if window is None:
                continue
            window.reset()
            if self.reached_now:
                window.detach()
            elif rebuilt:
                attach()

    def _record_round(self, trainer, plan: RoundPlan, notes: List[dict]) -> None:
        """Log the round's removals: every one to the event log; printed one line each, or
        one line for a round of more than fit a screen (an adaptive increment is thousands)."""
        each = len(plan.steps) <= LINES_PER_ROUND
        for (removal, after), note in zip(plan.steps, notes):
            self.removals.append(removal)
            self._new_removals.append(removal)
            event = removal_event(trainer.iteration, trainer.iteration * trainer.tokens_per_iter, removal, after,
                                  **note)
            if each and trainer.topo.rank == 0:
                print(f"pruned {removal.kind} {list(removal.indices)} at iteration {trainer.iteration}: "
                      f"{shape_line(after, self.target)}", flush=True)
            self.log.append(event)
        if plan and not each and trainer.topo.rank == 0:
            counts = {kind: sum(r.kind == kind for r in plan.removals) for kind in ("attn", "ffn", "stem")}
            print(f"pruned {len(plan.steps)} groups at iteration {trainer.iteration} "
                  f"({', '.join(f'{n} {kind}' for kind, n in counts.items() if n)}): "
                  f"{shape_line(trainer.arch, self.target)}", flush=True)

    def _target_reached(self, trainer) -> None:
        """Announce the end of the pruning stage and save the `pruned` checkpoint."""
        cfg = trainer.cfg
        trainer.progress.print(f"pap: pruning target reached at iteration {trainer.iteration} "
                               f"({trainer.iteration * trainer.tokens_per_iter:,} tokens): "
                               f"{trainer.arch.num_params():,} parameters (target {self.target:,}) after "
                               f"{len(self.removals)} removals; continuing as plain pretraining")
        # The pruned model's loss before any continued training: what the pruning stage kept.
        # (The interval's and the final validation report it already at those iterations.)
        interval = cfg.train.eval_interval
        if trainer.iteration < cfg.train.iters and not (interval and trainer.iteration % interval == 0):
            trainer.report_validation()
        if not (cfg.checkpoint.dir and cfg.checkpoint.save_pruned):
            return
        if trainer.last_saved != trainer.iteration:
            trainer.save()
        if trainer.topo.rank == 0:
            link = tag(cfg.checkpoint.dir, trainer.iteration, "pruned")
            trainer.progress.print(f"saved checkpoint {iteration_dir(cfg.checkpoint.dir, trainer.iteration)} "
                                   f"(tagged {link})")
