"""Patch `cuda_device`: `torch.cuda.current_device/synchronize/current_stream` on a CPU torch.

Upstream (megatron-core 0.16.1): about a hundred call sites pass
`device=torch.cuda.current_device()`; the first hit in training is
models/common/embeddings/rotary_pos_embedding.py:162, then
pipeline_parallel/p2p_communication.py:313/321 and tensor_parallel/layers.py:552.
`torch.cuda.synchronize()` is called unconditionally by
dist_checkpointing/strategies/filesystem_async.py:230 (every torch_dist save).
`torch.cuda.current_stream()` is used by the grad-buffer sync path.

Fix: on a machine without CUDA, `current_device()` returns the CPU device (which every
factory accepts as `device=`), `synchronize()` is a no-op (CPU ops are synchronous) and
the stream getters return an object whose methods do nothing.
"""

import torch

NAME = "cuda_device"


class _NullStream:
    """Stands in for a CUDA stream where all work is already synchronous."""

    def wait_event(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def record_event(self, *args, **kwargs):
        return None


def apply() -> None:
    """Point the `torch.cuda` device/stream getters at the CPU."""
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.current_stream = lambda *args, **kwargs: _NullStream()
    torch.cuda.default_stream = lambda *args, **kwargs: _NullStream()
