"""Atomic, reshardable checkpoints with auto-resume.

Layout (Megatron-LM's names, so its users find their way):

    <dir>/latest_checkpointed_iteration.txt     the newest complete checkpoint
    <dir>/iter_0000100/                         megatron-core dist_checkpointing (torch_dist)
    <dir>/iter_0000100/pap_state.json           Arch, iteration, scheduler, layout, config

Tensors are saved with megatron-core `dist_checkpointing` as full, unsharded tensors under
their global names (`model/<name>`, `optim/<moment>/<name>`), written once per pipeline
stage: TP and DP copies are replicas. Any layout loads them, including the uneven TP
shards of a pruned model and the DP-sharded state of the distributed optimizer, because
each rank slices what it holds. megatron's own sharded state dicts would assume even TP
shards and tie the distributed optimizer's state to one TP/PP. The price is a TP (and,
with the distributed optimizer, DP) all-gather at save and load. A save is written to
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
from typing import Callable, Optional

import torch
import torch.distributed as dist

from pap.arch import Arch
from pap.errors import PapError

TRACKER = "latest_checkpointed_iteration.txt"
STATE_FILE = "pap_state.json"


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


def rank_state_file(tp_rank: int, pp_rank: int, dp_rank: int) -> str:
    """Named by parallel coordinates, so a run with another DP size finds its replica's file."""
    return f"rank_state_tp{tp_rank:03d}_pp{pp_rank:03d}_dp{dp_rank:05d}.pt"


def _coordinates() -> tuple:
    from megatron.core import parallel_state as ps

    return (ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
            ps.get_data_parallel_rank())


def load_rank_state(resume: ResumeState, layout: dict) -> Optional[dict]:
    """This rank's saved `rank_state`, or None when there is none or its layout cannot be mapped.

    Same TP and PP: the file of the same coordinates. When only the DP size changed and
    neither run shards optimizer state over DP, every DP replica saved the same state
    (gradients are all-reduced before anything reads them), so DP replica 0's file serves.
    """
    if any(resume.layout.get(k) != layout[k] for k in ("tp", "pp")):
        return None
    tp_rank, pp_rank, dp_rank = _coordinates()
    if resume.layout.get("dp") != layout["dp"]:
        if resume.layout.get("distributed_optimizer") or layout.get("distributed_optimizer"):
            return None
        dp_rank = 0
    path = resume.path / rank_state_file(tp_rank, pp_rank, dp_rank)
    return torch.load(path, weights_only=False) if path.is_file() else None


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
            adam_step=data.get("adam_step"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PapError(f"{state_file}: unreadable checkpoint state ({exc}); delete this checkpoint "
                       f"directory to resume from an older one") from None


def _full_tensors(model, optimizer, is_loading: bool) -> dict:
    """{key: ShardedTensor} of this stage's full weights and (with `optimizer`) Adam moments."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from pap.sharding.adam_state import MOMENTS, gather_adam
    from pap.sharding.full_state import EMBEDDING, TIED_OUTPUT, full_shape, global_name, tp_gather

    tp_rank, dp_rank = ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank()
    moments = gather_adam(model, optimizer, across_pp=False) if optimizer is not None and not is_loading else None
    out = {}
    for local, param in model.named_parameters():
        name = global_name(model, local)
        # The last stage's copy of a tied embedding is a replica of the first stage's
        # tensor: never written, but read back from it.
        tied_copy = local == TIED_OUTPUT and model.share_embeddings_and_output_weights
        if tied_copy:
            name = EMBEDDING
        replica = (1 if tied_copy else 0, tp_rank, dp_rank)
        keys = {f"model/{name}": param.dtype}
        if optimizer is not None:
            keys.update({f"optim/{moment}/{name}": torch.float32 for moment in MOMENTS})
        for key, dtype in keys.items():
            if is_loading or tied_copy:
                tensor = torch.zeros(full_shape(param), dtype=dtype)
            elif key.startswith("model/"):
                tensor = tp_gather(param.detach(), param).cpu()
            else:
                moment = key.split("/")[1]
                tensor = moments[moment][name]
            out[key] = ShardedTensor.from_rank_offsets(key, tensor, replica_id=replica)
    return out


def _load_full(path: Path, model, optimizer, adam_step) -> None:
    from pap.sharding.adam_state import MOMENTS, scatter_adam
    from pap.sharding.full_state import load_full_state

    loaded = _dist_load(_full_tensors(model, optimizer, is_loading=True), path)
    load_full_state(model, {k[len("model/"):]: v for k, v in loaded.items() if k.startswith("model/")})
    if optimizer is not None:
        moments = {m: {k[len(f"optim/{m}/"):]: v for k, v in loaded.items() if k.startswith(f"optim/{m}/")}
                   for m in MOMENTS}
        scatter_adam(model, optimizer, moments, adam_step)


def save(root: str, iteration: int, consumed_samples: int, arch: Arch, model, optimizer,
         scheduler, layout: dict, config: dict, rank_state: Optional[dict] = None,
         write_extra: Optional[Callable[[Path], None]] = None) -> Path:
    """Write checkpoint `iteration` on every rank (collective); returns its final path.

    With `optimizer` and `scheduler` None, the checkpoint holds weights only. `rank_state`
    is this rank's own state (e.g. the pruning saliency window), reloadable at the same layout.
    `write_extra(directory)` runs on every rank before the checkpoint is made visible.
    """
    from megatron.core import dist_checkpointing

    final = iteration_dir(root, iteration)
    partial = final.with_name(final.name + ".partial")
    from pap.sharding.adam_state import adam_step as current_adam_step

    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    dist_checkpointing.save(_full_tensors(model, optimizer, is_loading=False), str(partial))
    adam_step = current_adam_step(optimizer) if optimizer is not None else None
    if rank_state is not None:
        torch.save(rank_state, partial / rank_state_file(*_coordinates()))
    if write_extra is not None:
        write_extra(partial)
    dist.barrier()
    if rank == 0:
        state = {
            "format": "full",
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


def tag(root: str, iteration: int, name: str) -> Path:
    """Link `<root>/<name>` to checkpoint `iteration` (rank 0 only; replaced atomically).

    A tag names a milestone, e.g. `pruned`: the first checkpoint at the target size,
    which `pap.convert mcore-to-hf --ckpt <root>/pruned` exports.
    """
    link = Path(root) / name
    staging = link.with_name(f".{name}.tmp")
    if staging.is_symlink() or staging.exists():
        staging.unlink()
    os.symlink(iteration_dir(root, iteration).name, staging)
    os.replace(staging, link)
    return link


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
    _load_full(resume.path, model, None, None)


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
    """Load model, optimizer and scheduler state from `resume` into freshly built objects (any layout)."""
    _load_full(resume.path, model, optimizer, resume.adam_step or 0.0)
    scheduler.load_state_dict(resume.scheduler)
