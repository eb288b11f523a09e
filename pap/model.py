"""Build megatron-core `GPTModel` stages (Llama-style) from an `Arch`.

This is one of the two places where megatron's own argument names appear (the other is
`pap.trainer`): the pap config and `Arch` are translated to a `TransformerConfig` here.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

from pap.arch import Arch
from pap.config import PapConfig
from pap.errors import PapError
from pap.init import initialize_weights
from pap.params import global_name, shard
from pap.sharding.layout import LayerPlacement, Placements, needs_placement


def _transformer_engine_import_error() -> Optional[str]:
    """Why Transformer Engine cannot be used here (None: it imports)."""
    try:
        import transformer_engine.pytorch  # noqa: F401  (only whether it imports matters)
    except Exception as exc:  # a broken install raises more than ImportError
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return None


def _use_transformer_engine(impl: str) -> bool:
    """`model.transformer_impl` resolved: `te`/`transformer_engine` require TE and a GPU,
    `auto` takes TE where both are there, `local` never does."""
    if impl == "local":
        return False
    problem = _transformer_engine_import_error()
    if impl in ("te", "transformer_engine"):
        if problem:
            raise PapError(f"model.transformer_impl={impl}: Transformer Engine does not import ({problem}); "
                           f"install it (the Dockerfile's image has it) or set model.transformer_impl=local")
        if not torch.cuda.is_available():
            raise PapError(f"model.transformer_impl={impl}: Transformer Engine needs a CUDA device and there is "
                           f"none; set model.transformer_impl=local (or auto) on CPU")
        return True
    return problem is None and torch.cuda.is_available()


def describe_implementation(impl: str) -> str:
    """One line saying which layers and attention a run uses, and why (logged at start:
    `auto` falling back to the local layers is slower and uses more memory, and must show)."""
    if _use_transformer_engine(impl):
        import transformer_engine

        version = getattr(transformer_engine, "__version__", "?")
        backends = [name for name, variable in (("flash", "NVTE_FLASH_ATTN"), ("fused", "NVTE_FUSED_ATTN"))
                    if os.environ.get(variable, "1") != "0"]
        return (f"Transformer Engine {version} layers; attention: TE DotProductAttention "
                f"(backends allowed: {', '.join(backends) or 'unfused only'}; TE picks per shape)")
    if impl == "local":
        reason = "model.transformer_impl=local"
    else:
        problem = _transformer_engine_import_error()
        reason = (f"auto: Transformer Engine does not import ({problem})" if problem
                  else "auto: no CUDA device")
    return f"local layers ({reason}); attention: megatron's unfused DotProductAttention"


def needs_cluster_layers(arch: Arch) -> bool:
    """True when some layer differs from the others or has unequal KV groups."""
    return not arch.is_uniform or any(0 in groups for groups in arch.heads_per_group)


def _leave_as_allocated(tensor: torch.Tensor) -> None:
    """An init method that draws nothing: for models whose weights are written right after."""


def transformer_config(arch: Arch, cfg: PapConfig, dtype: Optional[torch.dtype] = None,
                       initialize: bool = True, draw: bool = True):
    """megatron-core `TransformerConfig` for `arch` under `cfg.parallel`.

    Per-layer shapes give a `PerLayerConfig` (megatron's heterogeneous-block mechanism).
    `dtype` overrides `model.params_dtype` (converters hold bf16 weights on CPU without
    training them); `initialize=False` leaves weights unwritten (they are loaded next).
    `draw=False` keeps megatron's initialisation pass, which tags every parameter with its
    TP partitioning, but with init methods that draw nothing.
    """
    from pap.per_layer_config import PerLayerConfig  # megatron-core (heavy): loaded to build a model

    tp = cfg.parallel.tp
    cluster = needs_cluster_layers(arch) or needs_placement(arch, tp)
    on_gpu = torch.cuda.is_available()
    if dtype is None:
        dtype = torch.bfloat16 if cfg.model.params_dtype == "bf16" else torch.float32
    bf16 = dtype == torch.bfloat16
    if cluster:
        # Core attention sees one K/V head per query head (see pap.cluster_attention). With
        # TP, each rank describes its own share as `share * tp`, so megatron's even split
        # (`divide(size, tp)`) yields exactly this rank's size (pap.sharding.layout).
        rank = _tp_rank() if tp > 1 else 0
        shapes = []
        for layer in range(arch.num_layers):
            place = LayerPlacement(arch, layer, tp, rank)
            shapes.append((place.num_heads * tp, len(place.channels) * tp))
        heads = groups = max(h for h, _ in shapes)
        ffn = max(f for _, f in shapes)
        per_layer = {"layer_shapes": tuple(shapes), "heterogeneous_block_specs": True}
    else:
        heads, groups, ffn = arch.num_heads(0), arch.num_kv_heads(0), arch.ffn[0]
        per_layer = {}
    skip_draw = {} if draw else {"init_method": _leave_as_allocated, "output_layer_init_method": _leave_as_allocated,
                                 "embedding_init_method": _leave_as_allocated}
    return PerLayerConfig(
        **per_layer,
        **skip_draw,
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=arch.head_dim,
        ffn_hidden_size=ffn,
        gated_linear_unit=True,
        activation_func=F.silu,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.model.norm_eps,
        add_bias_linear=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        init_method_std=cfg.model.init_std,
        tensor_model_parallel_size=cfg.parallel.tp,
        pipeline_model_parallel_size=cfg.parallel.pp,
        sequence_parallel=cfg.parallel.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=bf16,
        # megatron's initialisation also tags every parameter with its TP partitioning
        # (`tensor_model_parallel`, `partition_dim`, `partition_stride`), which DDP, grad
        # clipping and pap.init read; pap.init then overwrites the values layout-independently.
        use_cpu_initialization=not on_gpu,
        perform_initialization=initialize,
        # Fused kernels are CUDA-only; p2p sync would call torch.cuda.synchronize.
        bias_activation_fusion=cfg.model.swiglu_fusion and on_gpu,
        masked_softmax_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        apply_rope_fusion=cfg.model.rope_fusion and on_gpu,
        gradient_accumulation_fusion=cfg.model.gradient_accumulation_fusion and on_gpu,
        persist_layer_norm=False,
        batch_p2p_sync=on_gpu,
        **_recompute(cfg),
    )


def _recompute(cfg: PapConfig) -> dict:
    """megatron's activation-recomputation settings for `model.recompute`."""
    if cfg.model.recompute == "selective":
        return {"recompute_granularity": "selective"}  # megatron's default module: core attention
    if cfg.model.recompute == "full":
        return {"recompute_granularity": "full", "recompute_method": "uniform",
                "recompute_num_layers": cfg.model.recompute_num_layers}
    return {}


GPU_ONLY_FUSIONS = ("gradient_accumulation_fusion", "rope_fusion", "swiglu_fusion")


def fusions_off_without_gpu(cfg: PapConfig) -> list:
    """The requested `model.*_fusion` settings that are off because there is no CUDA device."""
    if torch.cuda.is_available():
        return []
    return [name for name in GPU_ONLY_FUSIONS if getattr(cfg.model, name)]


def layer_spec(cfg: PapConfig):
    """ModuleSpec of one transformer layer: Transformer Engine on GPU if present, else local."""
    from megatron.core.models.gpt import gpt_layer_specs

    if _use_transformer_engine(cfg.model.transformer_impl):
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    return gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")


def _tag_placed_shards(model, arch: Arch, tp: int) -> None:
    """Record on each TP-split weight where its shards sit in the full tensor.

    `param.pap_shard` is a `pap.params.Shard` (from `pap.params.shard`, the one source of
    which rows a TP rank holds); `pap.sharding.full_state` and `pap.init` read it in place
    of megatron's even-split attributes, which pap's placement of a pruned `Arch` breaks.
    """
    if tp == 1:
        return
    rank = _tp_rank()
    placements = Placements(arch, tp)
    for local_name, param in model.named_parameters():
        placed = shard(global_name(model, local_name), placements, rank)
        if placed is None:
            continue
        if param.shape[placed.dim] != len(placed.indices):
            raise PapError(f"{local_name}: this TP rank's shard is {param.shape[placed.dim]} long along dimension "
                           f"{placed.dim}, but pap's placement gives it {len(placed.indices)}")
        param.pap_shard = placed


def _tp_rank() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_rank()


def block_spec(arch: Arch, cfg: PapConfig, config):
    """The decoder spec of this rank's stage: one layer spec, or one per layer with cluster attention."""
    import copy

    # megatron-core (heavy) loads when a model is built. `_get_block_submodules` is private:
    # megatron-core 0.16 has no public way to expand a block spec into its layer specs.
    from megatron.core.transformer.transformer_block import _get_block_submodules
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    from pap.cluster_attention import ClusterSelfAttention  # megatron-core, as above

    spec = layer_spec(cfg)
    tp = cfg.parallel.tp
    if not (needs_cluster_layers(arch) or needs_placement(arch, tp)):
        return spec
    rank = _tp_rank() if tp > 1 else 0
    block = _get_block_submodules(config, spec)
    offset = get_transformer_layer_offset(config)
    layer_specs = []
    for local in range(len(block.layer_specs)):
        layer = copy.deepcopy(spec)
        attention = layer.submodules.self_attention
        attention.module = ClusterSelfAttention
        place = LayerPlacement(arch, offset + local, tp, rank)
        attention.params = {**attention.params, "heads_per_group": place.heads_per_group}
        layer_specs.append(layer)
    block.layer_specs = layer_specs
    return block


def build_model(arch: Arch, cfg: PapConfig, dtype: Optional[torch.dtype] = None, initialize: bool = True,
                draw: bool = True):
    """The GPTModel stage owned by this rank (call after `init_distributed`).

    With `initialize=False` the weights are left unwritten for a checkpoint load; then
    megatron also skips tagging TP partitioning attributes, so use it at TP=1 only.
    With `draw=False` (any layout) megatron tags the parameters but no random weights are
    drawn, by megatron or by `pap.init`: for models whose training state is written next
    (a pruning round's rebuild, a resume, `init_from`), where drawing a full random tensor
    per parameter would only be overwritten.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    if not initialize and cfg.parallel.tp > 1:
        raise ValueError("build_model(initialize=False) is for TP=1 (conversion) only")
    config = transformer_config(arch, cfg, dtype, initialize, draw)
    model = GPTModel(
        config=config,
        transformer_layer_spec=block_spec(arch, cfg, config),
        vocab_size=arch.padded_vocab_size,
        max_sequence_length=cfg.data.seq_length,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=arch.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=cfg.model.rope_theta,
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    _tag_placed_shards(model, arch, cfg.parallel.tp)
    if initialize and draw:
        initialize_weights(model, cfg.train.seed, cfg.model.init_std, arch.num_layers)
    return model


def training_forward(module) -> bool:
    """True in a training forward pass of `module`: not an evaluation forward, and not the
    recomputation inside backward (activation checkpointing), which would see its tokens a
    second time. Forward hooks that gather statistics over training tokens ask this."""
    return module.training and torch._C._current_graph_task_id() == -1
