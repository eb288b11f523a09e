"""The pruning schedule as a trainer hook: k gradient steps, then p removals, until the target.

Each backward pass adds the step's saliency to the running sums; after every
`prune.grad_steps` optimizer steps the sums are reduced across ranks, and up to
`prune.prune_steps` minimal groups are chosen and physically removed (METHOD.md §5).
When the model is at or below `prune.target_params`, the run goes on as plain
pretraining. Every removal is appended to `<checkpoint.dir>/pruning_events.jsonl`.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import List, Optional

import torch

from pap import fault_injection
from pap.pruning.accumulator import SaliencyAccumulator
from pap.pruning.select import (UNTOUCHED, Floors, GroupScores, Removal, aligning_kind, choose, choose_greedy,
                                remove_from_arch)
from pap.sharding.reduce_saliency import global_layer_cosine, global_scores
from pap.sharding.reshard import apply_removals


def _drop(vector: torch.Tensor, index: int) -> torch.Tensor:
    return torch.cat([vector[:index], vector[index + 1:]])


def scores_after(scores: GroupScores, removal: Removal) -> GroupScores:
    """The remaining groups' scores once `removal` is gone (for several removals per round)."""
    if removal.kind == "attn":
        return replace(scores, attn=[v if i == UNTOUCHED else _drop(v, i) for v, i in zip(scores.attn, removal.indices)])
    if removal.kind == "ffn":
        return replace(scores, ffn=[v if i == UNTOUCHED else _drop(v, i) for v, i in zip(scores.ffn, removal.indices)])
    return replace(scores, stem=_drop(scores.stem, removal.indices[0]))


def layer_mean(values):
    """The per-layer mean of a width: an int when every layer has it (uniform pruning)."""
    values = list(values)
    return values[0] if len(set(values)) == 1 else sum(values) / len(values)


def removal_event(iteration: int, tokens: int, removal: Removal, arch, **extra) -> dict:
    """One line of `pruning_events.jsonl`: the removal and the shape right after it (`arch`):
    `heads`/`ffn` are per-layer means (the width of every layer under uniform pruning),
    `heads_per_layer`/`ffn_per_layer` the widths; `extra` adds fields (the OBS update's
    reconstruction errors, an adaptive increment's layer cosines and sparsities)."""
    layers = range(arch.num_layers)
    return {"iteration": iteration, "tokens": tokens, **removal.to_dict(), "params": arch.num_params(),
            "heads": layer_mean(arch.num_heads(l) for l in layers), "kv_heads": [arch.num_kv_heads(l) for l in layers],
            "ffn": layer_mean(arch.ffn), "hidden": arch.hidden_size,
            "heads_per_layer": [arch.num_heads(l) for l in layers], "ffn_per_layer": list(arch.ffn), **extra}


def _widths(values) -> str:
    """A width for the progress line: `8` when every layer has it, else `min-max`."""
    values = list(values)
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


_LINES_PER_ROUND = 32
"""Rounds with more removals than this print one summary line instead of a line each."""


def _shape_line(arch, target: int) -> str:
    reached = " (target reached)" if arch.num_params() <= target else ""
    layers = range(arch.num_layers)
    return (f"{arch.num_params():,} params, heads {_widths(arch.num_heads(l) for l in layers)}, "
            f"ffn {_widths(arch.ffn)}, hidden {arch.hidden_size}{reached}")


class PruningHook:
    """Owns the saliency window and decides when and what to remove."""

    def __init__(self, trainer, events_file: Optional[str] = None):
        cfg = trainer.cfg.prune
        self.cfg = cfg
        self.accumulator = SaliencyAccumulator(cfg.metric)
        start = trainer.source_arch.num_params()
        self.target = int(cfg.target_params if cfg.target_params > 1 else cfg.target_params * start)
        self.floors = Floors(heads=cfg.min_heads, ffn=cfg.min_ffn, hidden=cfg.min_hidden, kv_heads=cfg.min_kv_heads)
        self.events_file = events_file
        self.removals: List[Removal] = []
        self._new_removals: List[Removal] = []
        self.reached_now = False
        """Set by the round that reaches the target; the trainer saves the `pruned` checkpoint."""
        self.stuck_at_floors = False
        """Set once a round found nothing removable above the target (reported once)."""
        self.round_seconds = 0.0
        """Wall time of the last pruning round (reduction, choice, removal and rebuild)."""
        self._round_ran = False
        self.hessians = None
        """`prune.update: obs`: the window's layer-input Hessians (`pap.sharding.hessians`)."""
        self.obs = None
        """The last round's `ObsStats` (errors and time of the updates)."""
        if cfg.update == "obs":
            from pap.sharding.hessians import HessianWindow

            self.hessians = HessianWindow(cfg.hessian_tokens, trainer.cfg.train.global_batch_size,
                                          trainer.cfg.data.seq_length, trainer.topo.tp, trainer.topo.dp)
            if self.active(trainer):
                self.hessians.attach(trainer.model.module, trainer.arch)
        self.cosine = None
        """`prune.layers: adaptive`: the window's per-layer input/output cosine sums."""
        self.layer_plan = None
        """The last adaptive increment's per-layer cosines and sparsities (for the event log)."""
        if cfg.layers == "adaptive":
            from pap.pruning.layer_cosine import LayerCosine

            self.cosine = LayerCosine()
            if self.active(trainer):
                self._attach_cosine(trainer)
        trainer.after_backward_hooks.append(self.after_backward)
        trainer.after_step_hooks.append(self.after_step)

    def _attach_cosine(self, trainer) -> None:
        from megatron.core import parallel_state as ps

        counts = trainer.cfg.parallel.sequence_parallel or ps.get_tensor_model_parallel_rank() == 0
        self.cosine.attach(trainer.model.module, counts)

    def active(self, trainer) -> bool:
        return trainer.arch.num_params() > self.target

    def after_backward(self, trainer) -> None:
        if self.active(trainer):
            from pap.sharding.distopt import owned_ranges

            self.accumulator.update(trainer.model.module, trainer.arch.head_dim, owned_ranges(trainer.optimizer))
            if self.hessians is not None:
                self.hessians.end_step()

    def after_step(self, trainer, step) -> None:
        if not self.active(trainer) or self.accumulator.steps < self.cfg.grad_steps:
            return
        start = time.time()
        scores = global_scores(self.accumulator, trainer.arch, dp_sharded=trainer.cfg.parallel.distributed_optimizer)
        # Choose the round's removals on the Arch alone, then cut them all in one rebuild.
        if self.cfg.layers == "adaptive":
            arch, chosen, scores = self._increment(trainer, scores)
        else:
            arch, chosen = trainer.arch, []
            while len(chosen) < self.cfg.prune_steps and arch.num_params() > self.target:
                removal = self._choose(scores, arch)
                if removal is None:
                    break
                arch = remove_from_arch(arch, removal)
                chosen.append((removal, arch))
                scores = scores_after(scores, removal)
        if chosen and arch.num_params() <= self.target and self.cfg.final_multiple_of > 1:
            chosen += self._aligning(scores, arch)
        errors = [{}] * len(chosen)
        if chosen and self.layer_plan is not None:  # the increment's first event carries its plan
            errors[0] = dict(self.layer_plan)
        if chosen and self.hessians is not None:
            from pap.sharding.obs_round import apply_obs

            self.obs = apply_obs(trainer, self.hessians, chosen, self.cfg.hessian_damp)
            # The round solves each layer once for all its removals: the errors are per kind.
            errors = [{**extra, "obs_error": self.obs.errors.get(removal.kind),
                       "obs_error_plain": self.obs.plain_errors.get(removal.kind)}
                      for (removal, _), extra in zip(chosen, errors)]
        if chosen:
            apply_removals(trainer, [removal for removal, _ in chosen])
        # A line per removal, unless a round has more than fit a screen (an adaptive increment is
        # thousands at scale): then one line for the round. Every removal goes to the event log.
        each = len(chosen) <= _LINES_PER_ROUND
        for (removal, after), extra in zip(chosen, errors):
            self.removals.append(removal)
            self._new_removals.append(removal)
            self._record(trainer, removal, after, extra, printed=each)
        if chosen and not each and trainer.topo.rank == 0:
            counts = {kind: sum(r.kind == kind for r, _ in chosen) for kind in ("attn", "ffn", "stem")}
            print(f"pruned {len(chosen)} groups at iteration {trainer.iteration} "
                  f"({', '.join(f'{n} {kind}' for kind, n in counts.items() if n)}): "
                  f"{_shape_line(trainer.arch, self.target)}", flush=True)
        self.reached_now = not self.active(trainer)
        self._next_window(trainer, rebuilt=bool(chosen))
        if not chosen:  # every dimension at its floor above the target
            if not self.stuck_at_floors and trainer.topo.rank == 0:
                print(f"pap: prune.target_params ({self.target:,}) cannot be reached: every dimension is at its "
                      f"prune.min_* floor at {trainer.arch.num_params():,} parameters; training goes on at this "
                      f"size (lower the floors to prune further)", flush=True)
            self.stuck_at_floors = True
            return
        self.round_seconds = time.time() - start
        self._round_ran = True
        if trainer.topo.rank == 0:
            print(f"pruning round at iteration {trainer.iteration}: {len(chosen)} removal(s) in "
                  f"{self.round_seconds:.2f} s", flush=True)

    def _next_window(self, trainer, rebuilt: bool) -> None:
        """Restart the window's sums (saliency, layer cosines, Hessians). The hooks follow a
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

    def _choose(self, scores: GroupScores, arch, kinds=("attn", "ffn", "stem"), normalize="config",
                align=None) -> Optional[Removal]:
        """The next removal under `prune.layers` uniform or greedy."""
        normalize = self.cfg.normalize if normalize == "config" else normalize
        if self.cfg.layers == "uniform":
            return choose(scores, arch, normalize, self.floors, kinds=kinds)
        return choose_greedy(scores, arch, normalize, self.floors, kinds=kinds, align=align)

    def _increment(self, trainer, scores: GroupScores):
        """`prune.layers: adaptive`: one increment's removals, planned from the window's layer
        cosines (reduced over every rank) and Taylor scores; stops at the target.
        Returns (arch after, [(removal, arch after it)], scores of what is left)."""
        from pap.pruning.adaptive import layer_sparsity, plan_increment

        arch = trainer.arch
        cosine = global_layer_cosine(self.cosine, arch)
        budget = min(self.cfg.increment * arch.num_params(), arch.num_params() - self.target)
        self.layer_plan = {"layer_cosine": cosine,
                           "layer_sparsity": layer_sparsity(arch, cosine, self.cfg.adapt_amplitude, budget)}
        chosen = []
        for removal in plan_increment(scores, arch, cosine, self.cfg.increment, self.cfg.adapt_amplitude,
                                      self.target, self.floors):
            if arch.num_params() <= self.target:
                break
            arch = remove_from_arch(arch, removal)
            chosen.append((removal, arch))
            scores = scores_after(scores, removal)
        return arch, chosen, scores

    def _aligning(self, scores: GroupScores, arch) -> list:
        """The round that reaches the target also takes the least salient extra FFN and hidden
        channels until those widths are multiples of `prune.final_multiple_of` (the fastest
        GEMM shapes for the continued stage), or a floor stops it: [(removal, arch after)]."""
        multiple, out = self.cfg.final_multiple_of, []
        for kind in ("ffn", "stem"):
            while aligning_kind(arch, multiple) == kind:
                removal = self._choose(scores, arch, kinds=(kind,), normalize=None, align=multiple)
                if removal is None:  # at its floor: left unaligned
                    break
                arch = remove_from_arch(arch, removal)
                out.append((removal, arch))
                scores = scores_after(scores, removal)
        return out

    def state_dict(self) -> dict:
        """The saliency window and the removals so far (this rank's share)."""
        state = {"accumulator": self.accumulator.state_dict(), "target": self.target,
                 "removals": [r.to_dict() for r in self.removals]}
        if self.hessians is not None:
            state["hessians"] = self.hessians.state_dict()
        if self.cosine is not None:
            state["cosine"] = self.cosine.state_dict()
        return state

    def truncate_events(self, iteration: int) -> None:
        """Drop logged removals after `iteration` (a resumed run makes them again)."""
        from pap.progress import truncate_jsonl

        truncate_jsonl(self.events_file, iteration)

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
        self.removals = [Removal(r["kind"], tuple(r["indices"]), r["score"],
                                 tuple(r["candidates"][k] for k in ("attn", "ffn", "stem")))
                         for r in removals]

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

    def shape_summary(self, trainer) -> str:
        arch = trainer.arch
        return (f"params {arch.num_params() / 1e6:.2f}M heads {_widths(arch.num_heads(l) for l in range(arch.num_layers))} "
                f"kv {_widths(arch.num_kv_heads(l) for l in range(arch.num_layers))} ffn {_widths(arch.ffn)} "
                f"hidden {arch.hidden_size}")

    def _record(self, trainer, removal: Removal, arch, extra: Optional[dict] = None, printed: bool = True) -> None:
        """Log one removal (event file; stdout when `printed`); `arch` is the shape right after it."""
        event = removal_event(trainer.iteration, trainer.iteration * trainer.tokens_per_iter, removal, arch,
                              **(extra or {}))
        if trainer.topo.rank == 0:
            if printed:
                print(f"pruned {removal.kind} {list(removal.indices)} at iteration {trainer.iteration}: "
                      f"{_shape_line(arch, self.target)}", flush=True)
            if self.events_file:
                with open(self.events_file, "a") as f:
                    f.write(json.dumps(event) + "\n")
                fault_injection.point("events.after_write")
