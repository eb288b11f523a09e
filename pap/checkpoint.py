"""Atomic, reshardable checkpoints with auto-resume.

Layout (Megatron-LM's names, so its users find their way):

    <dir>/latest_checkpointed_iteration.txt     the newest complete checkpoint
    <dir>/iter_0000100/                         megatron-core dist_checkpointing (torch_dist)
    <dir>/iter_0000100/pap_state.json           Arch, iteration, scheduler, layout, config
    <dir>/iter_0000100/checksums.json           size and CRC-32 of every other file

Tensors are saved with megatron-core `dist_checkpointing` under their global names
(`model/<name>`, `optim/<moment>/<name>`, and for runs whose weights are not fp32, the fp32
master weights as `optim/master/<name>`) with each rank writing only what it holds: its TP
shard of the weights (DP replicas write once), and its own optimizer state (with the
distributed optimizer, its flat range), as boxes of the full tensor at their global
offsets (`pap.sharding.boxes`; a pruned model's TP shards are uneven, which megatron's
own sharded state dicts do not allow). Every tensor goes through
`pap.sharding.training_state.TrainingState`, the one owner of a parameter's weight,
master, moments and Adam step. Any layout loads a checkpoint: each rank asks for the boxes
it holds now, and torch's distributed checkpoint reads their overlaps with the saved ones
(checkpoints written as whole tensors by earlier versions load the same way). Nothing is
gathered at save or load. A save is written to
`iter_XXXXXXX.partial` and renamed only once every rank has finished and the state file
is on disk; the tracker file is replaced atomically after that. A crash mid-save leaves
a `.partial` directory that resume ignores (and the next save of that iteration removes).
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from pap import fault_injection
from pap.arch import Arch
from pap.errors import PapError
from pap.sharding.boxes import boxes
from pap.sharding.full_state import EMBEDDING, full_shape
from pap.sharding.shard_map import Placements, tp_dim
from pap.sharding.training_state import MOMENTS, TrainingState

TRACKER = "latest_checkpointed_iteration.txt"
STATE_FILE = "pap_state.json"
CHECKSUMS = "checksums.json"
"""Size and CRC-32 of every file of a checkpoint (written at save, verified at resume)."""


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
    masters: bool = False
    """True when fp32 master weights were saved beside the weights (`optim/master/<name>`)."""

    @property
    def model_only(self) -> bool:
        """True for weights without optimizer state (conversions, exports)."""
        return self.scheduler is None

    def setting_mismatch(self, model, keys) -> Optional[tuple]:
        """(key, saved value, `model`'s value) of the first of `keys` (model settings the
        weights depend on but `Arch` does not record) saved differently here; else None."""
        saved = self.config.get("model", {})
        for key in keys:
            if key in saved and saved[key] != getattr(model, key):
                return key, saved[key], getattr(model, key)
        return None


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


def complete_checkpoints(root: Optional[str]) -> list:
    """The complete checkpoints under `root` (those with a state file), newest first: the
    tracker's, then every `iter_*` directory by iteration (each state file parsed)."""
    return [_read_state(path / STATE_FILE) for path in checkpoint_dirs(root)]


def checkpoint_dirs(root: Optional[str]) -> list:
    """The directories of the complete checkpoints under `root` (those with a state file),
    newest first: the tracker's, then every `iter_*` directory by iteration. Unlike
    `complete_checkpoints`, no state file is parsed, so a damaged one in a checkpoint that
    is never used blocks nothing."""
    if not root or not Path(root).is_dir():
        return []
    tracked = tracker_iteration(root)
    candidates = [iteration_dir(root, tracked)] if tracked is not None else []
    for path in sorted(Path(root).glob("iter_[0-9][0-9][0-9][0-9][0-9][0-9][0-9]"), reverse=True):
        if path not in candidates:
            candidates.append(path)
    return [path for path in candidates if (path / STATE_FILE).is_file()]


def tracker_iteration(root: str) -> Optional[int]:
    """The iteration the tracker file of `root` names (None without one)."""
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise PapError(f"{tracker}: expected an iteration number, found {text[:40]!r}; "
                       f"fix or delete the file to resume from the newest iter_* directory")
    return int(text)


def overwritten_by_rollback(root: str) -> list:
    """Complete checkpoints newer than the one the tracker names that were already there when
    the tracker was last written (oldest first): a resume from the tracker's checkpoint
    replaces them as it saves.

    A save renames its directory into place and then rewrites the tracker, so a process
    killed in between leaves a newer checkpoint written *after* the tracker: that is the
    normal crash window (the resume goes on from the tracker, as Megatron-LM does), and it
    is not listed. A newer checkpoint older than the tracker file means the tracker was
    pointed back at an older checkpoint by hand.
    """
    tracked = tracker_iteration(root)
    if tracked is None:
        return []
    tracker_time = (Path(root) / TRACKER).stat().st_mtime_ns
    newer = [path for path in checkpoint_dirs(root) if int(path.name[len("iter_"):]) > tracked]
    return sorted((path for path in newer if (path / STATE_FILE).stat().st_mtime_ns <= tracker_time),
                  key=lambda path: path.name)


def find_latest(root: Optional[str]) -> Optional[ResumeState]:
    """The newest complete checkpoint under `root`, or None for a fresh start."""
    found = checkpoint_dirs(root)
    return _read_state(found[0] / STATE_FILE) if found else None


def _checksum(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 24)
            if not block:
                break
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def _write_checksums(directory: Path) -> None:
    """Record size and CRC-32 of every file under `directory`, the state file included
    (rank 0, once all ranks wrote and the state file is written)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS
                   and not p.name.endswith(".tmp"))
    table = {str(p.relative_to(directory)): {"size": p.stat().st_size, "crc32": _checksum(p)} for p in files}
    _write_atomic(directory / CHECKSUMS, json.dumps(table, indent=0))


def verify(path: Path) -> Optional[str]:
    """None when every file of checkpoint `path` matches its recorded size and CRC-32 (or no
    checksums were recorded: `unverified` says so); else what is wrong, naming the file."""
    table_file = Path(path) / CHECKSUMS
    if not table_file.is_file():
        return None
    try:
        table = json.loads(table_file.read_text())
        if not isinstance(table, dict):
            raise ValueError("not a table")
    except ValueError:
        return f"checkpoint {path} is damaged: {table_file} is not valid JSON"
    for name, expected in sorted(table.items()):
        file = Path(path) / name
        if not file.is_file():
            return f"checkpoint {path} is damaged: {file} is missing"
        size = file.stat().st_size
        if size != expected["size"]:
            return f"checkpoint {path} is damaged: {file} has {size:,} bytes, {expected['size']:,} were written"
        if _checksum(file) != expected["crc32"]:
            return f"checkpoint {path} is damaged: {file} does not match the checksum written with it"
    return None


def unverified(path: Path) -> Optional[str]:
    """What of checkpoint `path` its checksums do not cover (None: every file is covered).

    `verify` checks what `checksums.json` lists; a checkpoint without the table (deleted,
    or written before checksums existed) or whose table leaves out the state file
    (written before the state file was covered) is read partly or wholly unverified.
    """
    table_file = Path(path) / CHECKSUMS
    if not table_file.is_file():
        return (f"checkpoint {path} has no {CHECKSUMS}: none of its files can be verified "
                f"(it was deleted, or the checkpoint predates checksums)")
    try:
        table = json.loads(table_file.read_text())
    except ValueError:
        return None  # `verify` reports it as damaged
    if isinstance(table, dict) and STATE_FILE not in table:
        return (f"checkpoint {path}: {STATE_FILE} is not covered by {CHECKSUMS} (written by an older "
                f"version); its iteration, sample count and schedule are read unverified")
    return None


NO_VERIFY_ENV = "PAP_NO_VERIFY"
"""Set to 1 to read a checkpoint that fails its checksums anyway (one line says so)."""


def read_verified(path: str, flag: str = f"{NO_VERIFY_ENV}=1", report=print) -> ResumeState:
    """`read(path)` after verifying the checkpoint's files the way a resume does.

    A damaged checkpoint raises PapError naming the file, unless `flag` (the reader's way
    to go on: a command-line option, or `PAP_NO_VERIFY=1`) was given, which the caller
    says by setting that environment variable; then one line says it is read anyway.
    What the checksums do not cover is said in one line too. Only rank 0 (or a process
    outside torchrun) reads the files: the other ranks of the reader follow its exit.
    """
    state = read(path)
    if os.environ.get("RANK", "0") != "0":
        return state
    problem = verify(state.path)
    if problem is not None:
        if os.environ.get(NO_VERIFY_ENV) != "1":
            raise PapError(f"{problem}; pass {flag} to read it anyway")
        report(f"pap: {problem}; reading it anyway ({flag})")
    note = unverified(state.path)
    if note is not None:
        report(f"pap: {note}")
    return state


def read_state(path: Path) -> ResumeState:
    """The state of the checkpoint directory `path` (PapError naming the file if it cannot be read)."""
    return _read_state(Path(path) / STATE_FILE)


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
            masters=bool(data.get("masters", False)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PapError(f"{state_file}: unreadable checkpoint state ({exc}); delete this checkpoint "
                       f"directory to resume from an older one") from None


def _sharded_tensors(model, optimizer, arch: Arch, fields, loading: Optional[dict] = None) -> dict:
    """{unique key: ShardedTensor} of this rank's own pieces of `fields`, as boxes of the full
    tensors (`pap.sharding.boxes`): `param` as `model/<name>`, the others as
    `optim/<field>/<name>`. Weights (and the plain optimizer's state) cover the rank's TP
    shard and are replicas across DP; with the distributed optimizer, masters and moments
    cover the rank's own flat range. Norms and other unsplit tensors are replicas across TP.

    Saving, the data are this rank's values. Loading, `loading` maps each field to the key
    prefix to read it from, and the data are fp32 buffers that `_fill_from_boxes` puts in place.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    tp_rank, dp_rank = ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank()
    placements = Placements(arch, ps.get_tensor_model_parallel_world_size())
    state = TrainingState(model, optimizer)
    out = {}
    for record in state.records:
        # The last stage's copy of a tied embedding is a replica of the first stage's
        # tensor: never written, but read back from it.
        tied_copy = state.is_tied_copy(record)
        name = EMBEDDING if tied_copy else record.name
        shape = tuple(full_shape(record.param))
        tp_replica = tp_rank if tp_dim(name) is None else 0
        for field in fields:
            ranged = field != "param" and record.span is not None
            span = record.span if ranged else (0, record.param.numel())
            if ranged and record.master is None:
                continue  # this DP rank owns no range of it
            prefix = (loading or {}).get(field, "model" if field == "param" else f"optim/{field}")
            key = f"{prefix}/{name}"
            replica = (1 if tied_copy else 0, tp_replica, 0 if ranged else dp_rank)
            flat = None if loading is not None else state.owned_flat(record, field)
            for number, box in enumerate(boxes(name, shape, placements, tp_rank, span)):
                data = (torch.empty(box.shape, dtype=torch.float32) if flat is None
                        else box.view(flat).contiguous())
                out[f"{field}/{name}/{number}"] = ShardedTensor(
                    key, data, data.dtype, tuple(box.shape), shape, tuple(box.offset),
                    axis_fragmentations=None, replica_id=replica)
    return out


@torch.no_grad()
def _fill_from_boxes(model, optimizer, arch: Arch, loaded: dict, step: Optional[float]) -> None:
    """Put loaded boxes in place: `param` (read from the saved masters where there are any)
    sets the model param and, where separate, the fp32 master (its range); moments set
    Adam's state; `step` Adam's step (None: no moments, Adam starts afresh)."""
    from megatron.core import parallel_state as ps

    tp_rank = ps.get_tensor_model_parallel_rank()
    placements = Placements(arch, ps.get_tensor_model_parallel_world_size())
    state = TrainingState(model, optimizer)
    for record in state.records:
        name = EMBEDDING if state.is_tied_copy(record) else record.name
        shape = tuple(full_shape(record.param))

        def assemble(field: str, span) -> torch.Tensor:
            flat = torch.empty(span[1] - span[0], dtype=torch.float32)
            for number, box in enumerate(boxes(name, shape, placements, tp_rank, span)):
                box.view(flat).copy_(loaded[f"{field}/{name}/{number}"].reshape(box.view(flat).shape))
            return flat.to(record.param.device)

        weights = assemble("param", (0, record.param.numel()))
        span = state.owned_span(record)
        moments = ({moment: assemble(moment, span) for moment in MOMENTS}
                   if step is not None and record.master is not None else None)
        state.fill_owned(record, weights, moments)
    if step is not None:
        state.set_step(step)


def _saved_fields(model, optimizer) -> list:
    """What a save writes: weights; with an optimizer, Adam's moments, and the fp32 masters
    where they differ from the weights (any parameter not in fp32)."""

    if optimizer is None:
        return ["param"]
    masters = any(p.dtype != torch.float32 for p in model.parameters())
    return ["param"] + list(MOMENTS) + (["master"] if masters else [])


def _load_full(resume: "ResumeState", model, optimizer, with_moments: bool) -> None:
    """Load `resume`'s tensors into `model` (and `optimizer`): each rank reads only the boxes
    it holds, whatever the layout the checkpoint was written at (torch's distributed
    checkpoint reads the overlaps of saved and wanted boxes).

    Saved fp32 masters are the weights' source of truth when present: they set both the
    masters and the model params (their cast), so a bf16 run resumes with its exact fp32
    masters and an fp32 run started from a bf16 run's checkpoint gets full precision.
    Without saved masters the masters are the saved weights, upcast.
    """
    fields = ["param"] + (list(MOMENTS) if with_moments and optimizer is not None else [])
    sources = {"param": "optim/master" if resume.masters else "model",
               **{moment: f"optim/{moment}" for moment in MOMENTS}}
    wanted = _sharded_tensors(model, optimizer, resume.arch, fields, loading=sources)
    loaded = _dist_load(wanted, resume.path)
    step = (resume.adam_step or 0.0) if "exp_avg" in fields else None
    _fill_from_boxes(model, optimizer, resume.arch, loaded, step)


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
    fields = _saved_fields(model, optimizer)
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    _dist_save(_sharded_tensors(model, optimizer, arch, fields), partial)
    adam_step = TrainingState(model, optimizer).step() if optimizer is not None else None
    if rank_state is not None:
        torch.save(rank_state, partial / rank_state_file(*_coordinates()))
    if write_extra is not None:
        write_extra(partial)
    dist.barrier()
    if rank == 0:
        state = {
            "format": "boxes",
            "adam_step": adam_step,
            "masters": "master" in fields,
            "iteration": iteration,
            "consumed_samples": consumed_samples,
            "arch": json.loads(arch.to_json()),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "layout": layout,
            "config": config,
        }
        _write_atomic(partial / STATE_FILE, json.dumps(state, indent=1, default=str))
        _write_checksums(partial)  # covers the state file: every file a resume reads is verified
        fault_injection.point("checkpoint.before_rename")
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        fault_injection.point("checkpoint.before_tracker")
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


def _first_failure(exc: BaseException) -> BaseException:
    """The first rank's exception inside torch's CheckpointException (or `exc` itself)."""
    failures = getattr(exc, "failures", None)
    if failures:
        cause = next(iter(failures.values()))  # (exception, traceback frames)
        return cause[0] if isinstance(cause, tuple) else getattr(cause, "exception", cause)
    return exc


def _os_error_in(exc: BaseException) -> Optional[OSError]:
    """The OSError behind `exc`: itself, one it was raised from, or one its message quotes
    (`[Errno 28] ...`: torch's writer workers pass on only the text of theirs)."""
    import re

    seen = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    found = re.search(r"\[Errno (\d+)\] ([^:;\n]+)", str(exc))
    return OSError(int(found.group(1)), found.group(2).strip()) if found else None


def _dist_save(sharded_state: dict, partial: Path) -> None:
    """megatron `dist_checkpointing.save`, with a failed write (a full disk, a quota) as one
    line: torch wraps the OSError of each rank in a CheckpointException with tracebacks."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dist_checkpointing.save(sharded_state, str(partial))
    except CheckpointException as exc:
        cause = _first_failure(exc)
        refused = _os_error_in(cause)
        if refused is not None:  # one line with the system's reason (train.py's OSError handler)
            raise OSError(refused.errno, refused.strerror or str(refused), refused.filename or str(partial)) from None
        lines = str(cause).strip().splitlines()
        raise PapError(f"{partial}: the checkpoint could not be written: "
                       f"{lines[0][:300] if lines else type(cause).__name__}; the previous checkpoint "
                       f"is intact") from None


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
        cause = _first_failure(exc)
        lines = str(cause).strip().splitlines()
        raise PapError(f"{path}: cannot load the weights: {lines[0][:300] if lines else type(cause).__name__}; "
                       f"the checkpoint does not match its recorded architecture") from None


def load_model(resume: ResumeState, model, optimizer=None) -> None:
    """Load only the weights of `resume` into `model` (any TP/PP layout).

    With `optimizer`, its fp32 masters are set too (`init_from`: the optimizer exists
    already, and in bf16 its masters are separate copies that the first step would
    otherwise copy back over the loaded weights); Adam's state is left fresh.
    """
    _load_full(resume, model, optimizer, with_moments=False)


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
    _load_full(resume, model, optimizer, with_moments=True)
    scheduler.load_state_dict(resume.scheduler)
