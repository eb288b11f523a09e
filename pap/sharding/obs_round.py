"""The OBS update of a round's removals on the live, sharded training state (EfficientLLM-B).

Runs before the round's removals are cut (`pap.sharding.reshard.execute_round`): every
layer whose input columns the round takes moves its surviving weights to the
least-squares optimum (`pap.pruning.obs`), which makes the removed columns zero; the cut
then drops them as in variant A. The round's removals are mapped to the coordinates of
the model before the round and each layer is solved once for all of them, which is the
same as applying them in order, each on the weights the previous one left (see `run`).

Per round, on each pipeline stage (collective over the stage's TP×DP ranks):

1. the owner of each affected block (`pap.sharding.hessians`) factorises its H restricted
   to the surviving columns and solves for V = H⁻¹[:, P]; one SUM all-reduce of
   zero-filled buffers gives every rank every block's V ([n, |P|] each);
2. W[:, P], the removed columns of the fp32 masters, are assembled the same way from
   the ranks that own them (one all-reduce, [out, |P|] per block);
3. every rank computes U = −W[:, P]·(H⁻¹[P, P])⁻¹ (identically everywhere) and adds its own
   block of U Vᵀ to the fp32 masters it holds: the whole TP shard with the plain optimizer,
   its flat range with the distributed one. The model params follow as the masters' cast;
   with the distributed optimizer megatron's own copy and param all-gather publish them.

What travels is O((out + n)·|P|) per layer, never a weight matrix or an H.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from pap.arch import Arch
from pap.pruning.obs import held_out_grams, left_factor, relative_error, solve_columns
from pap.pruning.round_plan import RoundPlan
from pap.pruning.select import Removal
from pap.sharding.full_state import collective_device, full_shape, shard_indices
from pap.sharding.hessians import HessianWindow, Key, block_width, param_name
from pap.sharding.training_state import ParamRecord, TrainingState


@dataclass
class ObsStats:
    """What the round's updates did (the same on every rank)."""

    errors: Dict[str, float] = field(default_factory=dict)
    """Per removal kind of the round: mean over the updated layers of ‖ΔY‖/‖Y‖ on the
    window's *held-out* sampled tokens, those left out of H (attn: `linear_proj`; ffn:
    `linear_fc2`; stem: `linear_qkv`, `linear_fc1` and an untied `output_layer`). With no
    held-out tokens (`prune.hessian_holdout: 0`, or a window too short) the in-sample
    error: `held_out` says which."""
    plain_errors: Dict[str, float] = field(default_factory=dict)
    """The same without the update (the columns just dropped: variant A)."""
    fit_errors: Dict[str, float] = field(default_factory=dict)
    """‖ΔY‖/‖Y‖ on the tokens H was built from (in-sample: optimistic)."""
    fit_plain_errors: Dict[str, float] = field(default_factory=dict)
    """The same without the update."""
    held_out: bool = False
    seconds: float = 0.0


_ROWS = 4096
"""Rows of U Vᵀ formed at a time when a master is updated (bounds the float64 temporary)."""


def affected_columns(removal: Removal, arch: Arch, blocks: Sequence[Key]) -> List[Tuple[Key, List[int]]]:
    """The blocks of this stage whose input columns `removal` takes, with those columns in
    `arch`'s coordinates (the shape right before the removal)."""
    out = []
    for key in blocks:
        kind, layer = key
        if kind in ("proj", "fc2") and removal.kind in ("attn", "ffn") and removal.layer_index(layer) is None:
            continue  # a layer this removal leaves whole (prune.layers: greedy | adaptive)
        if removal.kind == "attn" and kind == "proj":
            head = removal.indices[layer]
            out.append((key, list(range(head * arch.head_dim, (head + 1) * arch.head_dim))))
        elif removal.kind == "ffn" and kind == "fc2":
            out.append((key, [removal.indices[layer]]))
        elif removal.kind == "stem" and kind in ("qkv", "fc1", "output"):
            out.append((key, [removal.indices[0]]))
    return out


def _sum(tensor: torch.Tensor, group, size: int) -> torch.Tensor:
    tensor = tensor.to(collective_device())
    if size > 1:
        dist.all_reduce(tensor, group=group)
    return tensor.cpu()


class ObsRound:
    """Apply the OBS updates of one round's removals to this stage's training state."""

    def __init__(self, state: TrainingState, arch: Arch, window: HessianWindow, damp: float):
        from megatron.core import parallel_state as ps  # megatron-core: heavy, and needs its parallel state

        self.state, self.arch, self.window, self.damp = state, arch, window, damp
        self.stage = window.stage
        self.records: Dict[str, ParamRecord] = {r.name: r for r in self.state.records}
        self.squares = window.output_squares()
        # Replicas hold identical masters: with the plain optimizer only DP rank 0 contributes.
        self.contributes = self.state.distributed or ps.get_data_parallel_rank() == 0
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.reporter = ps.get_data_parallel_rank() == 0 and ps.get_tensor_model_parallel_rank() == 0

    @torch.no_grad()
    def run(self, plan: RoundPlan) -> ObsStats:
        """Update for every removal of the round's `plan`, in order.

        Each layer gets one solve for all the columns the round takes from it: with H fixed
        for the round (dampening from its full diagonal), the optimum for the union of the
        removed columns is what applying the removals one after another gives, each with H
        restricted to the columns left (`pap.pruning.obs`), at one Cholesky factorisation
        per layer instead of one per removal.
        """
        start = time.time()
        arch = plan.start
        kept = {key: torch.arange(block_width(arch, key)) for key in self.window.blocks}
        removed: Dict[Key, List[int]] = {}
        kind_of: Dict[Key, str] = {}
        for removal, after in plan.steps:
            for key, columns in affected_columns(removal, arch, self.window.blocks):
                originals = kept[key][columns]  # coordinates of the model before the round
                removed.setdefault(key, []).extend(originals.tolist())
                kind_of[key] = removal.kind
                kept[key] = kept[key][~torch.isin(kept[key], originals)]
            arch = after
        jobs = [(key, torch.tensor(sorted(columns))) for key, columns in removed.items()]
        kinds = ("attn", "ffn", "stem")
        totals = torch.zeros(len(kinds), 5, dtype=torch.float64)
        if jobs:
            for (key, _), errors in zip(jobs, self._update(jobs)):
                totals[kinds.index(kind_of[key])] += torch.tensor([*errors, 1.0], dtype=torch.float64)
        totals = totals if self.reporter else torch.zeros_like(totals)
        if dist.is_initialized() and dist.get_world_size() > 1:
            totals = totals.to(collective_device())
            dist.all_reduce(totals)  # add the stages' layers
            totals = totals.cpu()
        present = [i for i in range(len(kinds)) if totals[i, 4] > 0]

        def mean(column):
            return {kinds[i]: float(totals[i, column] / totals[i, 4]) for i in present}

        held = self.window.held_positions > 0  # the same on every rank: the split is global
        return ObsStats(mean(2 if held else 0), mean(3 if held else 1), mean(0), mean(1), held, time.time() - start)

    def _update(self, jobs: List[Tuple[Key, torch.Tensor]]) -> List[Tuple[float, float, float, float]]:
        """The updates of this stage's layers (collective over the stage); returns per job
        ‖ΔY‖/‖Y‖ with the update and without it, on the fitted and on the held-out tokens."""
        stage, window = self.stage, self.window
        # 1. V = H⁻¹[:, P] and the four error Grams, from each block's owner.
        sizes = []
        for key, removed in jobs:
            n, q = block_width(self.arch, key), len(removed)
            sizes.append(n * q + 4 * q * q)
        packed = torch.zeros(sum(sizes), dtype=torch.float64)
        offset = 0
        for (key, removed), size in zip(jobs, sizes):
            if window.owners[key] == stage.me:
                packed[offset:offset + size] = self._solve(key, removed)
            offset += size
        packed = _sum(packed, stage.group, stage.size)
        # 2. W[:, P] from the masters' owners.
        outs = [full_shape(self.records[param_name(key)].param)[0] for key, _ in jobs]
        removed_weights = torch.zeros(sum(o * len(r) for o, (_, r) in zip(outs, jobs)), dtype=torch.float64)
        offset = 0
        for (key, removed), out in zip(jobs, outs):
            if self.contributes:
                removed_weights[offset:offset + out * len(removed)] = \
                    self._removed_columns(self.records[param_name(key)], removed, out).reshape(-1)
            offset += out * len(removed)
        removed_weights = _sum(removed_weights, stage.group, stage.size)
        # 3. U, the local update, the errors.
        results = []
        v_offset = w_offset = 0
        for (key, removed), size, out in zip(jobs, sizes, outs):
            n, q = block_width(self.arch, key), len(removed)
            block = packed[v_offset:v_offset + size]
            columns = block[:n * q].view(n, q)
            error_gram, removed_gram, held_error_gram, held_removed_gram = \
                block[n * q:].view(4, q, q).unbind(0)
            weights = removed_weights[w_offset:w_offset + out * q].view(out, q)
            v_offset, w_offset = v_offset + size, w_offset + out * q
            left = left_factor(weights, columns, removed)
            self._add(self.records[param_name(key)], left, columns)
            square, held_square = self.squares.get(key, (0.0, 0.0))
            results.append((relative_error(left, error_gram, square), relative_error(weights, removed_gram, square),
                            relative_error(left, held_error_gram, held_square),
                            relative_error(weights, held_removed_gram, held_square)))
        return results

    def _solve(self, key: Key, removed: torch.Tensor) -> torch.Tensor:
        """[V | Vᵀ H V | H[P, P] | the same two on the held-out rows] flattened, for the H this
        rank owns."""
        n = block_width(self.arch, key)
        hessian = self.window.hessians.get(key)
        if hessian is None:  # an empty window (a round follows at least one step)
            hessian = torch.zeros(n, n, dtype=torch.float64)
        solution = solve_columns(hessian, removed.tolist(), self.damp)  # on H's device
        held = self.window.held_out.get(key, torch.zeros(0, n))
        held_grams = held_out_grams(held, solution.inverse_columns, removed.tolist())
        return torch.cat([solution.inverse_columns.reshape(-1), solution.error_gram.reshape(-1),
                          solution.removed_gram.reshape(-1), *(g.reshape(-1) for g in held_grams)]).cpu()

    def _removed_columns(self, record: ParamRecord, removed: torch.Tensor, out: int) -> torch.Tensor:
        """This rank's owned values of W[:, removed] in full rows, zero elsewhere ([out, |P|])."""
        buffer = torch.zeros(out, len(removed), dtype=torch.float64)
        if record.master is None:
            return buffer
        if shard_indices(record.param) is None and self.tp_rank != 0:
            return buffer  # not split over TP: every TP rank holds the same values
        rows, local_columns, present = self._local_index(record, removed)
        if not present.any():
            return buffer
        slots = torch.nonzero(present).view(1, -1)  # which of the |P| columns are on this rank
        buffer[rows[:, None], slots] = self.state.master_columns(record, local_columns[present])
        return buffer

    def _local_index(self, record: ParamRecord, removed: torch.Tensor):
        """(full row of each local row, local column of each removed column, which are here)."""
        shard = shard_indices(record.param)
        rows = torch.arange(record.param.shape[0])
        if shard is not None and shard[0] == 0:
            rows = shard[1]
        if shard is not None and shard[0] == 1:
            where = {int(c): i for i, c in enumerate(shard[1])}
            present = torch.tensor([int(c) in where for c in removed])
            local = torch.tensor([where.get(int(c), 0) for c in removed])
            return rows, local, present
        return rows, removed.clone(), torch.ones(len(removed), dtype=torch.bool)

    def _add(self, record: ParamRecord, left: torch.Tensor, columns: torch.Tensor) -> None:
        """Add this rank's block of U Vᵀ to the fp32 master it holds (and the param, its cast)."""
        if record.master is None:
            return
        shard = shard_indices(record.param)
        rows_u, rows_v = left, columns
        if shard is not None:
            if shard[0] == 0:
                rows_u = left[shard[1]]
            else:
                rows_v = columns[shard[1]]
        self.state.add_outer_product(record, rows_u, rows_v, _ROWS)


def apply_obs(model, state: TrainingState, window: HessianWindow, plan: RoundPlan, damp: float) -> ObsStats:
    """OBS-update the weights of `state` (the training state of the DDP-wrapped `model`
    stage) for the round's `plan`, before its removals are cut; the model params follow
    the updated masters. Collective over every rank; params must be current."""
    stats = ObsRound(state, plan.start, window, damp).run(plan)
    state.publish_masters(model)
    return stats
