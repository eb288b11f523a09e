"""Shared test helpers: tiny configs and datasets, and an N-rank gloo launcher.

`run_distributed(fn, world_size, *args)` follows OLMo-core's `run_distributed_test`:
it spawns `world_size` fresh processes (spawn context, so each imports megatron clean),
sets the env:// rendezvous variables, calls `fn(*args)` on every rank and returns the
list of per-rank return values (anything `torch.save` can hold).
"""

from __future__ import annotations

import os
import socket
import tempfile
import traceback

import torch
import torch.multiprocessing as mp

TINY_VOCAB = 256


def tiny_config(blend_prefix: str, **sections) -> dict:
    """A ~100k-parameter model on a random-token dataset; sections override by key."""
    cfg = {
        "model": {"vocab_size": TINY_VOCAB, "hidden_size": 64, "num_layers": 4, "num_attention_heads": 4,
                  "num_query_groups": 2, "ffn_hidden_size": 128, "make_vocab_size_divisible_by": 128},
        "parallel": {"tp": 1, "pp": 1},
        "train": {"iters": 5, "micro_batch_size": 2, "global_batch_size": 8, "lr": 1e-2, "min_lr": 1e-3,
                  "warmup_iters": 1, "eval_interval": 0, "eval_iters": 2},
        "data": {"blend": [blend_prefix], "seq_length": 32, "split": "90,10,0"},
        "log": {"interval": 1},
        "checkpoint": {"dir": None},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_random_dataset(prefix: str, num_docs: int = 300, vocab: int = TINY_VOCAB, seed: int = 0) -> str:
    """A Megatron indexed dataset of learnable random documents (token 0 = end of document):
    arithmetic sequences modulo the vocab (`data_prep.synthetic`), so tests can see the loss fall."""
    from data_prep.synthetic import write_arithmetic_dataset

    return write_arithmetic_dataset(prefix, num_docs, vocab, seed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, out_dir, fn, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import warnings

    warnings.filterwarnings("ignore")
    try:
        result = fn(*args)
        torch.save({"ok": result}, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:  # report the failure to the parent with its traceback
        torch.save({"error": traceback.format_exc()}, os.path.join(out_dir, f"rank{rank}.pt"))
        raise
    finally:
        from pap.distributed import shutdown

        shutdown()


def run_distributed(fn, world_size: int, *args, timeout: float = 600):
    """Run `fn(*args)` on `world_size` gloo ranks; returns the per-rank results."""
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(_worker, args=(world_size, free_port(), out_dir, fn, args),
                                 nprocs=world_size, join=False, start_method="spawn")
        try:
            while not ctx.join(timeout=timeout):
                pass
        except mp.ProcessRaisedException:
            pass
        outcomes = []
        for rank in range(world_size):
            path = os.path.join(out_dir, f"rank{rank}.pt")
            outcomes.append(torch.load(path, weights_only=False) if os.path.exists(path) else None)
        for rank, data in enumerate(outcomes):
            if data is not None and "error" in data:
                raise RuntimeError(f"rank {rank} failed:\n{data['error']}")
        for rank, data in enumerate(outcomes):
            if data is None:
                raise RuntimeError(f"rank {rank} died without a result")
        return [data["ok"] for data in outcomes]
