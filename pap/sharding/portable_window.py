"""The pruning hook's saliency window in a layout-free form, so a run resumes mid-window
at another TP/PP/DP layout and still makes the decision an uninterrupted run would make.

Each rank's accumulator holds partial sums tied to its shards (see
`pap.sharding.reduce_saliency`). At a checkpoint they are written in global form:

* `pruning_window.pt` (rank 0): the window's step count and the *global* sums of the
  per-head, per-FFN-channel and per-hidden-channel scores (what the next round would
  reduce them to), plus the removals so far and the target;
* `pruning_fisher_layer{L}.pt` (one writer per layer, only for the Fisher-based metrics
  `mix` and `obd`): the full (TP=1) running sums of g^2 of that layer's `linear_proj` and
  `linear_fc2`, assembled over TP, and over DP with the distributed optimizer.

Restoring at any layout hands every rank the slice of the global sums it would have
accumulated itself: head and channel sums to the TP rank holding those heads/channels
(on DP rank 0 only when DP ranks hold partial sums), the hidden-channel sum to one rank
(the others start from zero, as the next reduction adds them all up), and the Fisher
sums cut like the weights. The next reduction gives the same global numbers, up to the
order of floating-point additions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from pap.arch import Arch
from pap.pruning.accumulator import SaliencyAccumulator
from pap.pruning.layer_cosine import LayerCosine
from pap.pruning.saliency import needs_fisher
from pap.pruning.select import Removal
from pap.sharding.distopt import owned_ranges
from pap.sharding.full_state import full_shape, tp_gather, tp_slice
from pap.sharding.reduce_saliency import global_scores, layer_cosine_totals

WINDOW_FILE = "pruning_window.pt"


def fisher_file(layer: int) -> str:
    return f"pruning_fisher_layer{layer:04d}.pt"


def _scored_weights(model) -> Dict[int, Dict[str, torch.nn.Parameter]]:
    """Global layer index -> the weights whose saliency the accumulator sums (its key names)."""
    return {layer.layer_number - 1: {"proj": layer.self_attention.linear_proj.weight,
                                     "fc2": layer.mlp.linear_fc2.weight}
            for layer in model.decoder.layers}


def _full_fisher(local: Optional[torch.Tensor], param, owned) -> torch.Tensor:
    """The TP=1 Fisher sum of `param` from this rank's piece (collective over DP and TP)."""
    from megatron.core import parallel_state as ps

    if owned is not None:  # each DP rank summed g^2 over the flat range it owns
        flat = torch.zeros(param.numel(), dtype=torch.float32, device=param.device)
        if local is not None:
            start, end = owned[id(param)][1:]
            flat[start:end] = local
        dist.all_reduce(flat, group=ps.get_data_parallel_group())
        local = flat.view(param.shape)
    return tp_gather(local, param).cpu()


def save_window(directory: Path, acc: SaliencyAccumulator, cosine_window: Optional[LayerCosine], target: int,
                removals: List[Removal], model, optimizer, arch: Arch, dp_sharded: bool) -> None:
    """Write a pruning run's window into checkpoint `directory`: the saliency sums of `acc`,
    the layer cosines (adaptive mode), the target and the removals so far. `model` is the
    (unwrapped) model stage the sums were taken on. Collective: every rank calls it."""
    from megatron.core import parallel_state as ps  # megatron-core: heavy, and needs its parallel state

    sums = global_scores(acc, arch, dp_sharded, mean=False) if acc.steps else None
    cosine = layer_cosine_totals(cosine_window, arch) if cosine_window is not None else None
    if dist.get_rank() == 0:
        torch.save({"steps": acc.steps, "metric": acc.metric, "target": target,
                    "removals": [r.to_dict() for r in removals], "cosine": cosine,
                    "sums": None if sums is None else {"attn": [v.cpu() for v in sums.attn],
                                                       "ffn": [v.cpu() for v in sums.ffn],
                                                       "stem": sums.stem.cpu()}},
                   directory / WINDOW_FILE)
    if not (acc.steps and needs_fisher(acc.metric)):
        return
    owned = owned_ranges(optimizer)
    writer = ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
    for index, weights in sorted(_scored_weights(model).items()):
        full = {key: _full_fisher(acc.fisher.get(f"{index}.{key}"), param, owned) for key, param in weights.items()}
        if writer:
            torch.save(full, directory / fisher_file(index))


def _local_columns(vector: torch.Tensor, param) -> torch.Tensor:
    """The entries of a per-input-column `vector` that this TP rank's shard of `param` holds."""
    full = vector.to(param.device)[None, :].expand(full_shape(param)[0], -1)
    return tp_slice(full, param)[0].clone()


def read_window(directory: Path) -> Optional[dict]:
    """The window file of checkpoint `directory` (`save_window`), or None when it has none."""
    path = directory / WINDOW_FILE
    return torch.load(path, weights_only=False) if path.is_file() else None


def load_window(state: dict, directory: Path, acc: SaliencyAccumulator, cosine_window: Optional[LayerCosine],
                model, optimizer, arch: Arch) -> bool:
    """Give this rank its share of the window `state` read from `directory` (`read_window`),
    for the (unwrapped) model stage `model`; False when its sums cannot be continued."""
    from megatron.core import parallel_state as ps  # megatron-core: heavy, and needs its parallel state

    if state["metric"] != acc.metric:
        return False  # scores of another metric cannot be continued
    if cosine_window is not None:
        # The global totals go to global rank 0; every other rank adds zeros at the reduction.
        cosine_window.reset()
        if state.get("cosine") is not None and dist.get_rank() == 0:
            sums, tokens = state["cosine"]
            cosine_window.load_state_dict({"sums": dict(enumerate(sums)), "tokens": dict(enumerate(tokens))})
    acc.reset()
    acc.steps = state["steps"]
    if not acc.steps:
        return True
    sums = state["sums"]
    head_dim = arch.head_dim
    owned = owned_ranges(optimizer)
    # Where DP ranks hold partial sums (distributed optimizer), DP rank 0 carries the total.
    carries = owned is None or ps.get_data_parallel_rank() == 0
    for index, weights in _scored_weights(model).items():
        attn = _local_columns(sums["attn"][index].double().repeat_interleave(head_dim), weights["proj"])[::head_dim]
        ffn = _local_columns(sums["ffn"][index].double(), weights["fc2"])
        acc.attn[index] = attn if carries else torch.zeros_like(attn)
        acc.ffn[index] = ffn if carries else torch.zeros_like(ffn)
        if needs_fisher(acc.metric):
            full = torch.load(directory / fisher_file(index), weights_only=False)
            for key, param in weights.items():
                local = tp_slice(full[key].to(param.device), param)
                if owned is None:
                    acc.fisher[f"{index}.{key}"] = local.clone()
                else:
                    start, end = owned[id(param)][1:] if id(param) in owned else (0, 0)
                    if end > start:
                        acc.fisher[f"{index}.{key}"] = local.reshape(-1)[start:end].clone()
    first = ps.get_tensor_model_parallel_rank() == 0 and ps.get_pipeline_model_parallel_rank() == 0
    stem = sums["stem"].double().to(next(model.parameters()).device)
    acc.stem = stem if first and carries else torch.zeros_like(stem)
    return True
