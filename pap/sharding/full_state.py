"""Full (unsharded) tensors of a TP/PP-sharded megatron `GPTModel`, by global name.

`gather_full_state` reassembles every parameter (or gradient) to the shape it has at
TP=1, PP=1, keyed by the name it has there (`decoder.layers.<global index>.…`);
`load_full_state` is the inverse. Used by tests (compare against a one-process
reference) and by checkpoint converters.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.distributed as dist

from pap.params import EMBEDDING, OUTPUT_LAYER, global_name

TIED_OUTPUT = OUTPUT_LAYER
"""The output layer's weight: on the last PP stage of a tied model, a copy of `EMBEDDING`."""


def _shard(param):
    """Where `param`'s TP shards sit (`pap.params.Shard`, set by `pap.model.build_model`), or
    None when it is whole on every rank."""
    return getattr(param, "pap_shard", None)


def full_shape(param) -> torch.Size:
    """Shape `param` has at TP=1."""
    placed = _shard(param)
    if placed is None:
        return param.shape
    shape = list(param.shape)
    shape[placed.dim] = placed.full_size
    return torch.Size(shape)


def shard_indices(param):
    """(dim, full-tensor indices along `dim` that this TP rank's shard of `param` holds, in
    the shard's order), or None when the parameter is not split over TP ranks."""
    placed = _shard(param)
    return None if placed is None else (placed.dim, placed.indices)


def tp_gather(tensor: torch.Tensor, param, copy: bool = True) -> torch.Tensor:
    """The TP=1 tensor assembled from every TP rank's `tensor` (a shard of `param`).

    One all-gather on `tensor`'s device (NCCL on GPU): shards shorter than the longest are
    padded to it, and each is put at the full-tensor indices its rank holds. For a parameter
    that is not TP-sharded the result is a copy, or `tensor` itself with `copy=False` (for
    read-only callers).
    """
    from megatron.core import parallel_state as ps  # heavy; only gathers over TP need it

    placed = _shard(param)
    if placed is None:
        return tensor.detach().clone() if copy else tensor.detach()
    dim, local = placed.dim, tensor.detach()
    longest = max(len(indices) for indices in placed.rank_indices)
    sent = local.contiguous()
    if local.shape[dim] < longest:
        padded_shape = list(local.shape)
        padded_shape[dim] = longest
        sent = local.new_zeros(padded_shape)
        sent.narrow(dim, 0, local.shape[dim]).copy_(local)
    parts = [torch.empty_like(sent) for _ in placed.rank_indices]
    dist.all_gather(parts, sent, group=ps.get_tensor_model_parallel_group())
    shape = list(local.shape)
    shape[dim] = placed.full_size
    full = local.new_empty(shape)
    for part, indices in zip(parts, placed.rank_indices):
        full.index_copy_(dim, indices.to(full.device), part.narrow(dim, 0, len(indices)))
    return full


def tp_slice(full: torch.Tensor, param) -> torch.Tensor:
    """This TP rank's slice of `full`, laid out as `param`'s shard."""
    placed = _shard(param)
    if placed is None:
        return full
    return full.index_select(placed.dim, placed.indices.to(full.device))


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
