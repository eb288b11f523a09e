"""Process-group and megatron `parallel_state` set-up for one run.

Works for `torchrun` (env:// rendezvous), for a plain `python -m pap.train` (a world of
one on a free local port) and for test workers that set the env variables themselves.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

import megatron_patches
from pap.errors import PapError


@dataclass(frozen=True)
class Topology:
    """Where this process sits in the TP x PP x DP grid."""

    rank: int
    world_size: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(tp: int, pp: int, seed: int, timeout_minutes: int = 30) -> Topology:
    """Join (or create) the default process group and build megatron's TP/PP/DP groups."""
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(_free_port())
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            # Small bookkeeping collectives (loss means, exit requests, saliency vectors of
            # the pruning schedule) use CPU tensors; they go over gloo, GPU tensors over NCCL.
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    world = dist.get_world_size()
    if world % (tp * pp):
        raise PapError(f"world size {world} is not a multiple of parallel.tp * parallel.pp = {tp * pp}; "
                       f"launch a multiple of {tp * pp} processes")
    megatron_patches.apply()

    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    return Topology(
        rank=dist.get_rank(), world_size=world, tp=tp, pp=pp, dp=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(), pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
    )


def shutdown() -> None:
    """Tear down megatron's groups and the default group (safe to call twice)."""
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
