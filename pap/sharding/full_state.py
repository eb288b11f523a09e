"""Full (unsharded) tensors of a TP/PP-sharded megatron `GPTModel`, by global name.

`gather_full_state` reassembles every parameter (or gradient) to the shape it has at
TP=1, PP=1, keyed by the name it has there (`decoder.layers.<global index>.…`);
`load_full_state` is the inverse. Used by tests (compare against a one-process
reference) and by checkpoint converters.
"""

from __future__ import annotations

import re
from typing import Dict

import torch
import torch.distributed as dist

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.*)$")
TIED_OUTPUT = "output_layer.weight"
EMBEDDING = "embedding.word_embeddings.weight"


# Transformer Engine fuses each RMSNorm into the linear layer after it, and names its
# weight there. Those weights go by the local layers' names everywhere pap names tensors
# (checkpoints, pruning, initialisation), so TE and local runs share checkpoints.
TE_TO_LOCAL = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
               "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight"}


def global_name(model, local_name: str) -> str:
    """`decoder.layers.<local>.x` -> `decoder.layers.<global>.x` (PP stage offset applied),
    with Transformer Engine's fused-norm names mapped to the local layers' (`TE_TO_LOCAL`)."""
    match = _LAYER.match(local_name)
    if not match:
        return local_name
    layer = model.decoder.layers[int(match.group(1))]
    leaf = TE_TO_LOCAL.get(match.group(2), match.group(2))
    return f"decoder.layers.{layer.layer_number - 1}.{leaf}"


def _tp_info(param):
    from megatron.core import parallel_state as ps

    size = ps.get_tensor_model_parallel_world_size()
    if size == 1 or not getattr(param, "tensor_model_parallel", False):
        return None
    return param.partition_dim, getattr(param, "partition_stride", 1), size


def full_shape(param) -> torch.Size:
    """Shape `param` has at TP=1."""
    placed = getattr(param, "pap_shard", None)
    if placed is not None:
        dim, _, size = placed
        shape = list(param.shape)
        shape[dim] = size
        return torch.Size(shape)
    info = _tp_info(param)
    if info is None:
        return param.shape
    dim, _, size = info
    shape = list(param.shape)
    shape[dim] *= size
    return torch.Size(shape)


def shard_indices(param):
    """(dim, full-tensor indices along `dim` that this TP rank's shard of `param` holds, in
    the shard's order), or None when the parameter is not split over TP ranks."""
    from megatron.core import parallel_state as ps

    placed = getattr(param, "pap_shard", None)
    if placed is not None:
        dim, indices, _ = placed
        return dim, indices
    info = _tp_info(param)
    if info is None:
        return None
    dim, stride, size = info
    full = torch.arange(param.shape[dim] * size)
    piece = full.numel() // (size * stride)
    pieces = torch.split(full, piece)
    return dim, torch.cat(pieces[ps.get_tensor_model_parallel_rank()::size])


def tp_gather(tensor: torch.Tensor, param, copy: bool = True) -> torch.Tensor:
    """The TP=1 tensor assembled from every TP rank's `tensor` (a shard of `param`).

    Tensor collectives only, on `tensor`'s device (NCCL on GPU): uneven shards are padded
    to the largest one and placed by the indices each rank holds. For a parameter that is
    not TP-sharded the result is a copy, or `tensor` itself with `copy=False` (for
    read-only callers).
    """
    from megatron.core import parallel_state as ps

    placed = getattr(param, "pap_shard", None)
    if placed is not None:  # uneven shards placed by pap.sharding.layout
        dim, indices, size = placed
        group = ps.get_tensor_model_parallel_group()
        world = ps.get_tensor_model_parallel_world_size()
        rows = tensor.detach().movedim(dim, 0).contiguous()
        count = torch.tensor([rows.shape[0]], dtype=torch.long, device=rows.device)
        counts = [torch.empty_like(count) for _ in range(world)]
        dist.all_gather(counts, count, group=group)
        counts = [int(c) for c in counts]
        longest = max(counts)
        padded = rows.new_zeros((longest,) + tuple(rows.shape[1:]))
        padded[:rows.shape[0]] = rows
        where = torch.zeros(longest, dtype=torch.long, device=rows.device)
        where[:rows.shape[0]] = indices.to(rows.device)
        parts, places = [torch.empty_like(padded) for _ in range(world)], [torch.empty_like(where) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        dist.all_gather(places, where, group=group)
        full = rows.new_empty((size,) + tuple(rows.shape[1:]))
        for n, part, place in zip(counts, parts, places):
            full.index_copy_(0, place[:n], part[:n])
        return full.movedim(0, dim)

    info = _tp_info(param)
    if info is None:
        return tensor.detach().clone() if copy else tensor.detach()
    dim, stride, size = info
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.detach().contiguous(), group=ps.get_tensor_model_parallel_group())
    # A strided partition holds `stride` chunks (e.g. [gate_local; up_local] of SwiGLU fc1):
    # the full tensor is chunk 0 of every rank, then chunk 1 of every rank, ...
    chunks = [part.chunk(stride, dim=dim) for part in parts]
    return torch.cat([chunks[r][j] for j in range(stride) for r in range(size)], dim=dim)


def tp_slice(full: torch.Tensor, param) -> torch.Tensor:
    """This TP rank's slice of `full`, laid out as megatron shards `param`."""
    from megatron.core import parallel_state as ps

    placed = getattr(param, "pap_shard", None)
    if placed is not None:
        dim, indices, _ = placed
        return full.index_select(dim, indices.to(full.device))

    info = _tp_info(param)
    if info is None:
        return full
    dim, stride, size = info
    piece = full.shape[dim] // (size * stride)
    pieces = torch.split(full, piece, dim=dim)
    return torch.cat(pieces[ps.get_tensor_model_parallel_rank()::size], dim=dim)


def _local_tensor(param, what):
    if callable(what):
        return what(param)
    if what == "param":
        return param.detach()
    grad = getattr(param, "main_grad", None)
    if grad is None:
        grad = param.grad
    return torch.zeros_like(param) if grad is None else grad.detach()


def gather_full_state(model, what="param", across_pp: bool = True) -> Dict[str, torch.Tensor]:
    """Full tensors by global name, on every rank of the model's PP group.

    `what`: 'param', 'grad', or a function param -> tensor shaped like it (e.g. an Adam moment).
    With `across_pp=False`, only this stage's tensors (no PP collective).

    A tied output layer on the last stage is left out (it is the embedding).
    """
    local = {}
    for name, param in model.named_parameters():
        if name == TIED_OUTPUT and model.share_embeddings_and_output_weights:
            continue  # the last stage's copy of a tied embedding (PP > 1)
        local[global_name(model, name)] = tp_gather(_local_tensor(param, what), param).cpu()
    return gather_across_pp(local) if across_pp else local


def gather_across_pp(local: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Every PP stage's `local` tensors on every rank of the PP group.

    Names, shapes and dtypes travel as small Python objects; the tensors themselves are
    broadcast from their stage with tensor collectives on the training device.
    """
    from megatron.core import parallel_state as ps

    if ps.get_pipeline_model_parallel_world_size() == 1:
        return local
    group = ps.get_pipeline_model_parallel_group()
    device = collective_device()
    described = [None] * ps.get_pipeline_model_parallel_world_size()
    dist.all_gather_object(described, [(n, tuple(t.shape), t.dtype) for n, t in local.items()], group=group)
    merged: Dict[str, torch.Tensor] = {}
    for stage, entries in enumerate(described):
        source = dist.get_process_group_ranks(group)[stage]
        for name, shape, dtype in entries:
            if name in local and source == dist.get_rank():
                tensor = local[name].to(device).contiguous()
            else:
                tensor = torch.empty(shape, dtype=dtype, device=device)
            dist.broadcast(tensor, src=source, group=group)
            merged[name] = tensor.cpu()
    return merged


def collective_device() -> torch.device:
    """Where tensors for collectives live: this rank's GPU (NCCL) when there is one, else the CPU (gloo)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def load_full_state(model, full: Dict[str, torch.Tensor], assign=None) -> None:
    """Copy full tensors (by global name) into this rank's shards of `model`.

    `assign(param, local_slice)` replaces the default copy into the parameter itself
    (e.g. to set optimizer state shaped like it).
    """
    for name, param in model.named_parameters():
        key = global_name(model, name)
        if key not in full and key in (TIED_OUTPUT, EMBEDDING):
            key = EMBEDDING if key == TIED_OUTPUT else TIED_OUTPUT
        if key not in full:
            raise KeyError(f"full state has no tensor for {key}")
        local = tp_slice(full[key], param)
        if assign is None:
            param.copy_(local.to(param.dtype))
        else:
            assign(param, local)
