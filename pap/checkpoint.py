"""Atomic, reshardable checkpoints with auto-resume.

Layout (Megatron-LM's names, so its users find their way):

    <dir>/latest_checkpointed_iteration.txt     the newest complete checkpoint
    <dir>/iter_0000100/                         megatron-core dist_checkpointing (torch_dist)
    <dir>/iter_0000100/pap_state.json           Arch, iteration, scheduler, layout, config

Tensors are saved with megatron-core `dist_checkpointing` in one of two formats:

* `full` (the default): every weight and Adam moment as its full, unsharded tensor under
  its global name, written once per pipeline stage (TP and DP copies are replicas). Any
  layout loads it, including the uneven TP shards of a pruned model, because each rank
  slices what it holds. Costs a TP all-gather at save and load.
* `megatron`: megatron's own sharded state dicts, used with the distributed optimizer,
  whose `dp_reshardable` optimizer state reloads only at the same TP and PP. A save is written to
`iter_XXXXXXX.partial` and renamed only once every rank has finished and the state file
is on disk; the tracker file is replaced atomically after that. A crash mid-save leaves
a `.partial` directory that resume ignores (and the next save of that iteration removes).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from pap.arch import Arch
from pap.errors import PapError

TRACKER = "latest_checkpointed_iteration.txt"
STATE_FILE = "pap_state.json"
# The distributed optimizer's default sharding type is deprecated in megatron-core 0.16
# and fails to save ("ShardedTensor.flattened_range is not supported"); this one works.
_OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


def iteration_dir(root: str, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


@dataclass
class ResumeState:
    """What a checkpoint says beyond its tensors."""

    path: Path
    iteration: int
    consumed_samples: int
    arch: Arch
    scheduler: Optional[dict]
    layout: dict
    config: dict
    format: str = "megatron"
    adam_step: Optional[float] = None

    @property
    def model_only(self) -> bool:
        """True for weights without optimizer state (conversions, exports)."""
        return self.scheduler is None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rank_state_file(rank: int) -> str:
    return f"rank_state_{rank:05d}.pt"


def load_rank_state(resume: ResumeState, layout: dict) -> Optional[dict]:
    """This rank's saved `rank_state`, or None when there is none or the layout changed."""
    path = resume.path / rank_state_file(dist.get_rank())
    same_layout = all(resume.layout.get(k) == layout[k] for k in ("tp", "pp", "dp"))
    if not same_layout or not path.is_file():
        return None
    return torch.load(path, weights_only=False)


def find_latest(root: Optional[str]) -> Optional[ResumeState]:
    """The newest complete checkpoint under `root`, or None for a fresh start."""
    if not root or not Path(root).is_dir():
        return None
    tracker = Path(root) / TRACKER
    candidates = []
    if tracker.is_file():
        text = tracker.read_text().strip()
        if not text.isdigit():
            raise PapError(f"{tracker}: expected an iteration number, found {text[:40]!r}; "
                           f"fix or delete the file to resume from the newest iter_* directory")
        candidates.append(iteration_dir(root, int(text)))
    candidates += sorted(Path(root).glob("iter_[0-9][0-9][0-9][0-9][0-9][0-9][0-9]"), reverse=True)
    for path in candidates:
        state_file = path / STATE_FILE
        if state_file.is_file():
            return _read_state(state_file)
    return None


def _read_state(state_file: Path) -> ResumeState:
    try:
        data = json.loads(state_file.read_text())
        return ResumeState(
            path=state_file.parent,
            iteration=int(data["iteration"]),
            consumed_samples=int(data["consumed_samples"]),
            arch=Arch(**data["arch"]),
            scheduler=data.get("scheduler"),
            layout=data["layout"],
            config=data.get("config", {}),
            format=data.get("format", "megatron"),
            adam_step=data.get("adam_step"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PapError(f"{state_file}: unreadable checkpoint state ({exc}); delete this checkpoint "
                       f"directory to resume from an older one") from None


def _sharded_state(model, optimizer, is_loading: bool):
    model_state = model.sharded_state_dict()
    if optimizer is None:
        return {"model": model_state}
    optimizer_state = optimizer.sharded_state_dict(model_state, is_loading=is_loading, metadata=_OPTIMIZER_METADATA)
    return {"model": model_state, "optimizer": optimizer_state}


# ---- the `full` format ------------------------------------------------------------------------
MOMENTS = ("exp_avg", "exp_avg_sq")


def _adam_states(optimizer) -> dict:
    """id(param) -> (torch optimizer, its state dict) for megatron's non-distributed optimizer."""
    states = {}
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = chained.optimizer
        for group in inner.param_groups:
            for param in group["params"]:
                states[id(param)] = (inner, param)
    return states


def _full_tensors(model, optimizer, is_loading: bool) -> dict:
    """{key: ShardedTensor} of full tensors: `model/<name>` and `optim/<moment>/<name>`."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from pap.sharding.full_state import EMBEDDING, TIED_OUTPUT, full_shape, global_name, tp_gather

    tp_rank, dp_rank = ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank()
    states = _adam_states(optimizer) if optimizer is not None else {}
    out = {}
    for local, param in model.named_parameters():
        name = global_name(model, local)
        # The last stage's copy of a tied embedding is a replica of the first stage's
        # tensor: never written, but read back from it.
        tied_copy = local == TIED_OUTPUT and model.share_embeddings_and_output_weights
        if tied_copy:
            name = EMBEDDING
        replica = (1 if tied_copy else 0, tp_rank, dp_rank)
        sources = {f"model/{name}": lambda p: p.detach()}
        if optimizer is not None:
            for moment in MOMENTS:
                def fetch(p, moment=moment):
                    inner, key = states[id(p)]
                    state = inner.state.get(key, {})
                    return state[moment] if moment in state else torch.zeros_like(p)

                sources[f"optim/{moment}/{name}"] = fetch
        for key, fetch in sources.items():
            if is_loading:
                dtype = param.dtype if key.startswith("model/") else torch.float32
                tensor = torch.empty(full_shape(param), dtype=dtype)
            else:
                tensor = tp_gather(fetch(param), param).cpu()
            out[key] = ShardedTensor.from_rank_offsets(key, tensor, replica_id=replica)
    return out


def _load_full(path: Path, model, optimizer, adam_step) -> None:
    from pap.sharding.full_state import load_full_state

    loaded = _dist_load(_full_tensors(model, optimizer, is_loading=True), path)
    load_full_state(model, {k[len("model/"):]: v for k, v in loaded.items() if k.startswith("model/")})
    if optimizer is None:
        return
    states = _adam_states(optimizer)
    for moment in MOMENTS:
        prefix = f"optim/{moment}/"

        def assign(param, local, moment=moment):
            inner, key = states[id(param)]
            state = inner.state[key]
            state["step"] = torch.tensor(float(adam_step))
            state[moment] = local.to(param.device, torch.float32).clone()

        load_full_state(model, {k[len(prefix):]: v for k, v in loaded.items() if k.startswith(prefix)},
                        assign=assign)


def _adam_step(optimizer) -> float:
    for inner, key in _adam_states(optimizer).values():
        step = inner.state.get(key, {}).get("step")
        if step is not None:
            return float(step)
    return 0.0


def save(root: str, iteration: int, consumed_samples: int, arch: Arch, model, optimizer,
         scheduler, layout: dict, config: dict, rank_state: Optional[dict] = None) -> Path:
    """Write checkpoint `iteration` on every rank (collective); returns its final path.

    With `optimizer` and `scheduler` None, the checkpoint holds weights only. `rank_state`
    is this rank's own state (e.g. the pruning saliency window), reloadable at the same layout.
    """
    from megatron.core import dist_checkpointing

    final = iteration_dir(root, iteration)
    partial = final.with_name(final.name + ".partial")
    rank = dist.get_rank()
    fmt = "megatron" if layout.get("distributed_optimizer") else "full"
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    if fmt == "full":
        dist_checkpointing.save(_full_tensors(model, optimizer, is_loading=False), str(partial))
    else:
        dist_checkpointing.save(_sharded_state(model, optimizer, is_loading=False), str(partial))
    adam_step = _adam_step(optimizer) if optimizer is not None else None
    if rank_state is not None:
        torch.save(rank_state, partial / rank_state_file(rank))
    dist.barrier()
    if rank == 0:
        state = {
            "format": fmt,
            "adam_step": adam_step,
            "iteration": iteration,
            "consumed_samples": consumed_samples,
            "arch": json.loads(arch.to_json()),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "layout": layout,
            "config": config,
        }
        _write_atomic(partial / STATE_FILE, json.dumps(state, indent=1, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        _write_atomic(Path(root) / TRACKER, f"{iteration}\n")
    dist.barrier()
    return final


def _materialise_optimizer_state(optimizer) -> None:
    """Give a fresh optimizer the Adam state tensors its sharded state dict must describe.

    Without apex/Transformer Engine, megatron wraps torch's Adam, which creates `step`,
    `exp_avg` and `exp_avg_sq` lazily at the first step; loading into a fresh optimizer
    then trips distrib_optimizer.py:641 (megatron-core 0.16.1). Zeros are overwritten by the load.
    """
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = chained.optimizer
        for group in inner.param_groups:
            for param in group["params"]:
                state = inner.state[param]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(param.data)
                    state["exp_avg_sq"] = torch.zeros_like(param.data)


def _dist_load(sharded_state: dict, path: Path) -> dict:
    """megatron `dist_checkpointing.load`, with a mismatch reported as one PapError line.

    torch's CheckpointException derives from BaseException and carries per-rank
    tracebacks; the first rank's message is what the user needs.
    """
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        return dist_checkpointing.load(sharded_state, str(path))
    except (Exception, CheckpointException) as exc:
        cause = exc
        failures = getattr(exc, "failures", None)
        if failures:
            cause = next(iter(failures.values()))  # (exception, traceback frames)
            cause = cause[0] if isinstance(cause, tuple) else getattr(cause, "exception", cause)
        lines = str(cause).strip().splitlines()
        raise PapError(f"{path}: cannot load the weights: {lines[0][:300] if lines else type(cause).__name__}; "
                       f"the checkpoint does not match its recorded architecture") from None


def load_model(resume: ResumeState, model) -> None:
    """Load only the weights of `resume` into `model` (any TP/PP layout)."""
    if resume.format == "full":
        _load_full(resume.path, model, None, None)
        return
    state = _dist_load({"model": model.sharded_state_dict()}, resume.path)
    model.load_state_dict(state["model"])


def read(path: str) -> ResumeState:
    """The checkpoint at `path`: a checkpoint root (newest inside) or one `iter_*` directory."""
    direct = Path(path) / STATE_FILE
    if direct.is_file():
        return _read_state(direct)
    found = find_latest(path)
    if found is None:
        raise PapError(f"{path}: no complete pap checkpoint here (expected {STATE_FILE} in it or in an iter_* "
                       f"directory below it)")
    return found


def load(resume: ResumeState, model, optimizer, scheduler, layout: dict) -> None:
    """Load model, optimizer and scheduler state from `resume` into freshly built objects."""
    saved = resume.layout
    if saved.get("distributed_optimizer") or layout.get("distributed_optimizer"):
        if (saved.get("tp"), saved.get("pp"), saved.get("distributed_optimizer")) != (
                layout["tp"], layout["pp"], layout["distributed_optimizer"]):
            raise PapError(f"{resume.path}: saved with tp={saved.get('tp')} pp={saved.get('pp')} "
                           f"distributed_optimizer={saved.get('distributed_optimizer')}; a distributed-optimizer "
                           f"checkpoint reloads only at the same tp, pp and optimizer type")
    _materialise_optimizer_state(optimizer)
    if resume.format == "full":
        if layout.get("distributed_optimizer"):
            raise PapError(f"{resume.path}: saved without the distributed optimizer; resume with "
                           f"parallel.distributed_optimizer=false")
        _load_full(resume.path, model, optimizer, resume.adam_step or 0.0)
    else:
        state = _dist_load(_sharded_state(model, optimizer, is_loading=True), resume.path)
        model.load_state_dict(state["model"])
        with torch.no_grad():  # fp32 main params may be views of leaf params (distrib_optimizer.py:940)
            optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(resume.scheduler)
