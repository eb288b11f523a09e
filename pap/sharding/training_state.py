"""One owner for each parameter's training state: model param, fp32 master, Adam moments, step.

megatron-core keeps a parameter's training state in up to four places, and where depends
on the optimizer and the dtype:

=====================  ====================  ==========================  ======================
optimizer              fp32 master           Adam moments keyed by       covers
=====================  ====================  ==========================  ======================
FP32Optimizer          the model param       the model param             this TP shard
Float16Optimizer...    ``param.main_param``  the fp32 master             this TP shard
(bf16, plain)          (a separate copy)
DistributedOptimizer   shard main param      the shard main param        one flat DP range
                       (a view of the param
                       in fp32, a copy in
                       bf16)
=====================  ====================  ==========================  ======================

and Adam's step count lives either in each parameter's state (torch's Adam/AdamW, what
megatron uses on CPU) or in the optimizer's ``param_groups`` (Transformer Engine's and
apex's FusedAdam, what megatron uses on GPU, and what megatron's own checkpoints read).

`TrainingState` hides all of that. Given a model stage and its megatron optimizer it
reads and writes, by global parameter name and in full (TP=1) shape, the fields

* ``master``: the fp32 master weight (the source of truth: the model param is its cast);
* ``exp_avg``, ``exp_avg_sq``: Adam's moments (zeros before the first step);
* ``param``: the model param itself, in its own dtype;

and Adam's step. A pruning round, a checkpoint save and load, ``init_from`` and a resume
at another layout all go through it, so the bf16 case, where master and model param are
different tensors, cannot be forgotten by one of them. Collectives are tensor
collectives on the parameters' device (NCCL on GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist

from pap.sharding.full_state import EMBEDDING, TIED_OUTPUT, gather_across_pp, global_name, tp_gather, tp_slice

MOMENTS = ("exp_avg", "exp_avg_sq")
OPTIMIZER_FIELDS = ("master",) + MOMENTS
FIELDS = ("param",) + OPTIMIZER_FIELDS


@dataclass
class ParamRecord:
    """Where one model parameter's training state lives on this rank."""

    name: str                              # global (TP=1, PP=1) name
    param: torch.nn.Parameter              # the model param: this rank's TP shard
    master: Optional[torch.Tensor]         # fp32 master of `span`; None: no optimizer, or no range owned
    inner: Optional[torch.optim.Optimizer]  # the torch optimizer holding the Adam state
    span: Optional[Tuple[int, int]]        # flat range of `param` that `master` covers; None: all of it

    @property
    def shares_storage(self) -> bool:
        """True where the master is (a view of) the model param itself (fp32 runs)."""
        return self.master is not None and self.master.dtype == self.param.dtype \
            and self.master.untyped_storage().data_ptr() == self.param.untyped_storage().data_ptr()

    def adam(self) -> dict:
        """The torch optimizer's state dict entry of this parameter (created empty if missing)."""
        return self.inner.state[self.master]


def _chained(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _is_distributed(opt) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return isinstance(opt, DistributedOptimizer)


def param_range(opt, param) -> Tuple[int, int]:
    """(start, end) of the flat range of `param` that this DP rank owns under megatron's
    DistributedOptimizer `opt`.

    The one read of megatron's private `_get_model_param_range_map` in pap (megatron-core
    0.16 has no public accessor for it); everything else asks here.
    """
    rng = opt._get_model_param_range_map(param)["param"]
    return rng.start, rng.end


def _masters(opt) -> Dict[int, Tuple[torch.Tensor, Optional[Tuple[int, int]]]]:
    """id(model param) -> (fp32 master, flat span or None) for one megatron optimizer."""
    found = {}
    if _is_distributed(opt):
        for param, (group, order) in opt.model_param_group_index_map.items():
            found[id(param)] = (opt.optimizer.param_groups[group]["params"][order], param_range(opt, param))
        return found
    if hasattr(opt, "float16_groups"):  # Float16OptimizerWithFloat16Params: separate fp32 copies
        for model_group, main_group in zip(opt.float16_groups, opt.fp32_from_float16_groups):
            for param, main in zip(model_group, main_group):
                found[id(param)] = (main, None)
        for group in opt.fp32_from_fp32_groups:
            for param in group:
                found[id(param)] = (param, None)
        return found
    for group in opt.optimizer.param_groups:  # FP32Optimizer: the model params themselves
        for param in group["params"]:
            found[id(param)] = (param, None)
    return found


def keeps_step_in_param_groups(inner: torch.optim.Optimizer) -> bool:
    """True for FusedAdam-style optimizers (Transformer Engine, apex): one `step` per param group.

    torch's Adam and AdamW keep a per-parameter `state["step"]` instead.
    """
    return not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW))


class TrainingState:
    """Read and write every parameter's training state of one model stage by global name."""

    def __init__(self, module, optimizer=None):
        self.module = module
        self.optimizer = optimizer
        self.distributed = optimizer is not None and any(_is_distributed(o) for o in _chained(optimizer))
        masters, inners = {}, {}
        for opt in _chained(optimizer) if optimizer is not None else []:
            for key, value in _masters(opt).items():
                masters[key] = value
                inners[key] = opt.optimizer
        self.records: List[ParamRecord] = []
        for local_name, param in module.named_parameters():
            master, span = masters.get(id(param), (None, None))
            if self.distributed and master is None:
                span = (0, 0)  # this DP rank owns no range of it
            self.records.append(ParamRecord(global_name(module, local_name), param, master,
                                            inners.get(id(param)), span))

    @property
    def inner_optimizers(self) -> list:
        return [o.optimizer for o in _chained(self.optimizer)] if self.optimizer is not None else []

    def is_tied_copy(self, record: ParamRecord) -> bool:
        """The last stage's copy of a tied embedding (PP > 1): a replica, never the source of truth."""
        return record.name == TIED_OUTPUT and self.module.share_embeddings_and_output_weights

    # ---- local (this TP shard) ------------------------------------------------------------
    def owned_piece(self, record: ParamRecord, field: str) -> Optional[torch.Tensor]:
        """The fp32 values of `field` that this rank holds for `record` (flat over its span, or shaped)."""
        if record.master is None:
            return None
        if field == "master":
            return record.master.detach()
        state = record.inner.state.get(record.master, {})
        return state[field].detach() if field in state else None

    def local(self, record: ParamRecord, fields: Iterable[str]) -> Dict[str, torch.Tensor]:
        """{field: fp32 tensor shaped like this rank's shard of the param} (collective over DP
        with the distributed optimizer: every DP rank must call it for the same records)."""
        from megatron.core import parallel_state as ps

        param = record.param
        fields = list(fields)
        out = {}
        if "param" in fields:
            out["param"] = param.detach()
        wanted = [f for f in fields if f != "param"]
        if not wanted:
            return out
        if record.span is None:  # the whole shard is here
            for field in wanted:
                piece = self.owned_piece(record, field)
                out[field] = (piece.float() if piece is not None
                              else param.detach().float() if field == "master"
                              else torch.zeros(param.shape, dtype=torch.float32, device=param.device))
            return out
        # Distributed optimizer: each DP rank holds one flat range; every element is owned by
        # exactly one rank, so a SUM of zero-filled buffers assembles it exactly.
        flat = torch.zeros(len(wanted), param.numel(), dtype=torch.float32, device=param.device)
        start, end = record.span
        for row, field in enumerate(wanted):
            piece = self.owned_piece(record, field)
            if piece is not None and end > start:
                flat[row, start:end] = piece.reshape(-1).float()
        dist.all_reduce(flat, group=ps.get_data_parallel_group())
        for row, field in enumerate(wanted):
            out[field] = flat[row].view(param.shape)
        return out

    @torch.no_grad()
    def set_local(self, record: ParamRecord, values: Dict[str, torch.Tensor]) -> None:
        """Write this rank's shard of `record` from `values` (fp32 tensors shaped like the shard).

        `values["master"]` (or, without it, `values["param"]`) sets both the fp32 master and
        the model param (its cast): the model param is always the master rounded to its dtype.
        """
        weights = values.get("master", values.get("param"))
        param = record.param
        if weights is not None:
            weights = weights.to(param.device)
            param.copy_(weights.to(param.dtype))
            if record.master is not None and not record.shares_storage:
                piece = weights.reshape(-1)[record.span[0]:record.span[1]] if record.span else weights
                record.master.copy_(piece.reshape(record.master.shape).to(torch.float32))
        if record.master is None or not any(m in values for m in MOMENTS):
            return
        state = record.adam()
        for moment in MOMENTS:
            full = values.get(moment)
            if full is None:
                full = torch.zeros(param.shape, dtype=torch.float32)
            full = full.to(param.device, torch.float32)
            piece = full.reshape(-1)[record.span[0]:record.span[1]] if record.span else full
            state[moment] = piece.reshape(record.master.shape).clone()

    # ---- flat values over what this rank owns ------------------------------------------------
    def owned_flat(self, record: ParamRecord, field: str) -> torch.Tensor:
        """This rank's values of `field` for `record`, flat: the whole TP shard for `param` and
        the plain optimizer, the owned range with the distributed optimizer. A missing master
        is the weights themselves; missing moments (before Adam's first step) are zeros."""
        if field == "param":
            return record.param.detach().reshape(-1)
        piece = self.owned_piece(record, field)
        if piece is not None:
            return piece.reshape(-1).float()
        size = record.param.numel() if record.span is None else record.span[1] - record.span[0]
        if field == "master":
            return record.param.detach().reshape(-1).float()
        return torch.zeros(size, dtype=torch.float32, device=record.param.device)

    def owned_span(self, record: ParamRecord) -> Tuple[int, int]:
        """The flat range of `record`'s TP shard whose optimizer state this rank holds
        ((0, 0): none, under the distributed optimizer)."""
        if record.master is None and self.distributed:
            return 0, 0
        return record.span if record.span is not None else (0, record.param.numel())

    @torch.no_grad()
    def fill_owned(self, record: ParamRecord, weights: torch.Tensor,
                   moments: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """Set `record` from flat fp32 values: `weights` (the whole TP shard) sets the model
        param (its cast) and, where separate, the fp32 master's range; `moments` (flat over
        the owned range) replace Adam's state. Adam's step is set apart (`set_step`)."""
        param = record.param
        param.copy_(weights.view(param.shape).to(param.dtype))
        if record.master is None:
            return
        start, end = self.owned_span(record)
        if not record.shares_storage:
            record.master.copy_(weights[start:end].view(record.master.shape))
        if moments is not None:
            adam = record.adam()
            for moment in MOMENTS:
                adam[moment] = moments[moment].view(record.master.shape)

    def state_fields(self, record: ParamRecord) -> Dict[str, torch.Tensor]:
        """Flat, read-only views of `record`'s optimizer state that are not the weights
        themselves: the fp32 master where separate, and the Adam moments that exist."""
        fields = {}
        if record.master is None:
            return fields
        if not record.shares_storage:
            fields["master"] = record.master.detach().reshape(-1)
        adam = record.inner.state.get(record.master, {})
        for moment in MOMENTS:
            if moment in adam:
                fields[moment] = adam[moment].detach().reshape(-1)
        return fields

    def state_targets(self, record: ParamRecord, with_moments: bool) -> Dict[str, torch.Tensor]:
        """Flat, writable views of `record`'s optimizer state for a caller that fills every
        element (a pruning round): the fp32 master where separate, and with `with_moments`
        newly allocated Adam moments (left uninitialised: the caller writes all of them)."""
        targets = {}
        if record.master is None:
            return targets
        if not record.shares_storage:
            targets["master"] = record.master.detach().view(-1)
        if with_moments:
            adam = record.adam()
            for moment in MOMENTS:
                adam[moment] = torch.empty(record.master.shape, dtype=torch.float32, device=record.master.device)
                targets[moment] = adam[moment].view(-1)
        return targets

    @staticmethod
    def parking_space(record: ParamRecord) -> torch.Tensor:
        """A flat fp32 buffer shaped like `record`'s shard that is free until the next step
        zeroes it: its DDP gradient buffer. A round parks the new masters there while
        megatron builds the new optimizer, so old and new masters are never alive together."""
        return record.param.main_grad.view(-1)

    @torch.no_grad()
    def take_parked_master(self, record: ParamRecord) -> int:
        """Copy the master parked in `parking_space(record)` into the optimizer's master;
        returns the bytes copied."""
        record.master.copy_(record.param.main_grad.view(record.master.shape))
        return record.master.numel() * 4

    # ---- in-place updates of the fp32 masters ------------------------------------------------
    @torch.no_grad()
    def master_columns(self, record: ParamRecord, columns: torch.Tensor) -> torch.Tensor:
        """float64 [local rows, len(columns)]: the fp32 master's local `columns` of `record`'s
        TP shard, zero where this rank owns no value (the distributed optimizer's range)."""
        if record.span is None:
            values = record.master.detach().view(record.param.shape)[:, columns.to(record.master.device)]
            return values.double().cpu()
        start, end = record.span
        flat = torch.arange(record.param.shape[0])[:, None] * record.param.shape[1] + columns[None, :]
        inside = (flat >= start) & (flat < end)
        values = torch.zeros(flat.shape, dtype=torch.float64)
        where = (flat[inside] - start).to(record.master.device)
        values[inside] = record.master.detach().reshape(-1)[where].double().cpu()
        return values

    @torch.no_grad()
    def add_outer_product(self, record: ParamRecord, left: torch.Tensor, right: torch.Tensor,
                          rows_at_a_time: int) -> None:
        """master += left @ rightᵀ over what this rank owns (`left`: [local rows, k],
        `right`: [local columns, k], float64), `rows_at_a_time` rows per temporary; with the
        plain optimizer the model param follows as the master's cast (`publish_masters`
        does it for the distributed optimizer)."""
        param, master = record.param, record.master
        device = master.device
        left, right = left.to(device), right.to(device)
        width = param.shape[1]
        if record.span is None:
            matrix = master.view(param.shape)
            for first in range(0, param.shape[0], rows_at_a_time):  # bounded float64 temporaries
                last = min(first + rows_at_a_time, param.shape[0])
                matrix[first:last].add_((left[first:last] @ right.T).to(torch.float32))
            if not record.shares_storage:
                param.data.copy_(matrix.to(param.dtype))
            return
        start, end = record.span
        flat = master.view(-1)
        for chunk in range(start, end, rows_at_a_time * width):
            stop = min(chunk + rows_at_a_time * width, end)
            first, last = chunk // width, (stop - 1) // width + 1
            delta = (left[first:last] @ right.T).reshape(-1)[chunk - first * width:stop - first * width]
            flat[chunk - start:stop - start].add_(delta.to(torch.float32))

    def publish_masters(self, ddp_model) -> None:
        """After masters changed outside an optimizer step under the distributed optimizer:
        each rank casts its masters into its range of the model params, and megatron's
        param all-gather over DP gives every rank the whole params (the plain optimizer's
        params were written with their masters already)."""
        if not self.distributed:
            return
        for optimizer in _chained(self.optimizer):
            # megatron-core 0.16 offers this copy only as a private method of the optimizer.
            optimizer._copy_main_params_to_model_params()
        ddp_model.start_param_sync(force_sync=True)

    # ---- full (TP=1) tensors by global name ------------------------------------------------
    def gather(self, fields: Iterable[str], across_pp: bool = True,
               copy: bool = True) -> Dict[str, Dict[str, torch.Tensor]]:
        """{field: {global name: full TP=1 tensor on the CPU}}; collective over TP (and DP, PP).

        With `copy=False` the tensors are read-only: where nothing had to be gathered (TP=1,
        plain optimizer, on the CPU) they are the live state itself, which the next
        optimizer step changes. A tied output layer on the last stage is left out (it is
        the embedding).
        """
        fields = list(fields)
        result = {field: {} for field in fields}
        for record in self.records:
            local = self.local(record, fields)
            if self.is_tied_copy(record):
                continue
            for field in fields:
                result[field][record.name] = tp_gather(local[field], record.param, copy=copy).cpu()
        if across_pp:
            result = {field: gather_across_pp(tensors) for field, tensors in result.items()}
        return result

    def write(self, full: Dict[str, Dict[str, torch.Tensor]], step: Optional[float] = None) -> None:
        """Give every parameter of this stage its slice of `full` ({field: {global name: tensor}}).

        `master` or `param` is required; moments are optional (absent: Adam starts afresh for
        those tensors) and `step` sets Adam's step count wherever it is kept.
        """
        if step is None and any(m in full for m in MOMENTS):
            raise ValueError("moments without Adam's step: torch's Adam cannot take a step from that state")
        source = "master" if "master" in full else "param"
        for record in self.records:
            key = record.name
            if key not in full[source] and key in (TIED_OUTPUT, EMBEDDING):
                key = EMBEDDING if key == TIED_OUTPUT else TIED_OUTPUT
            if key not in full[source]:
                raise KeyError(f"full state has no tensor for {key}")
            values = {field: tp_slice(tensors[key], record.param) for field, tensors in full.items()
                      if key in tensors}
            self.set_local(record, values)
        if step is not None:
            self.set_step(step)

    # ---- Adam's step ---------------------------------------------------------------------------
    def step(self) -> float:
        """Adam's step count, agreed by every rank (a rank may own no state at all)."""
        value = 0.0
        for inner in self.inner_optimizers:
            if keeps_step_in_param_groups(inner):
                value = max([value] + [float(g["step"]) for g in inner.param_groups if "step" in g])
            else:
                value = max([value] + [float(s["step"]) for s in inner.state.values() if "step" in s])
        total = torch.tensor([value], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(total, op=dist.ReduceOp.MAX)
        return float(total.item())

    def set_step(self, step: float) -> None:
        """Set Adam's step count where this optimizer keeps it (param groups or per-param state)."""
        for inner in self.inner_optimizers:
            if keeps_step_in_param_groups(inner):
                for group in inner.param_groups:
                    group["step"] = int(step)
            else:
                for state in inner.state.values():
                    if state:
                        state["step"] = torch.tensor(float(step), dtype=torch.float32)
