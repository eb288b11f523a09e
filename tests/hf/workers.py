"""Per-rank functions for the conversion tests (run by tests.helpers.run_distributed)."""

from __future__ import annotations

import torch


def megatron_logits(ckpt: str, tp: int, pp: int, tokens: torch.Tensor, resave_to: str = None):
    """Logits [batch, seq, vocab] of the pap checkpoint `ckpt` loaded at TP=tp, PP=pp.

    Returns them on the rank holding the last stage's TP rank 0 (None elsewhere).
    With `resave_to`, also writes a weights-only checkpoint from this layout.
    """
    import dataclasses

    from megatron.core import tensor_parallel
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from pap import checkpoint
    from pap.config import DataConfig, ModelConfig, PapConfig, ParallelConfig
    from pap.distributed import init_distributed
    from pap.model import build_model

    topo = init_distributed(tp, pp, seed=0)
    source = checkpoint.read(ckpt)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    model_cfg = ModelConfig(**{k: v for k, v in source.config["model"].items() if k in known})
    model_cfg.params_dtype = "fp32"
    cfg = PapConfig(model=model_cfg, parallel=ParallelConfig(tp=tp, pp=pp),
                    data=DataConfig(blend=["-"], seq_length=tokens.shape[1]))
    model = build_model(source.arch, cfg)
    checkpoint.load_model(source, model)
    model.config.batch_p2p_sync = False
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    collected = {}

    def loss_func(output):
        collected["logits"] = tensor_parallel.gather_from_tensor_model_parallel_region(output).detach()
        return output.sum() * 0, {}

    def forward_step(_, stage):
        return stage(tokens, positions, None), loss_func

    with torch.no_grad():
        get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([None]), model=[model],
                                    num_microbatches=1, seq_length=tokens.shape[1],
                                    micro_batch_size=tokens.shape[0], forward_only=True)
    if resave_to:
        checkpoint.save(resave_to, 0, 0, source.arch, model, None, None,
                        layout={"tp": tp, "pp": pp, "dp": topo.dp, "distributed_optimizer": False},
                        config=source.config)
    if topo.is_last_stage and topo.tp_rank == 0:
        return collected["logits"][..., : source.arch.vocab_size].clone()
    return None


def make_checkpoint(arch_json: str, out: str, seed: int = 3):
    """A weights-only pap checkpoint of a randomly initialised model of `arch_json` (TP=1)."""
    import dataclasses

    from pap import checkpoint
    from pap.arch import Arch
    from pap.config import DataConfig, ModelConfig, PapConfig, ParallelConfig, TrainConfig
    from pap.distributed import init_distributed
    from pap.model import build_model

    init_distributed(1, 1, seed)
    arch = Arch.from_json(arch_json)
    model_cfg = ModelConfig(vocab_size=arch.vocab_size, hidden_size=arch.hidden_size, head_dim=arch.head_dim,
                            tie_embeddings=arch.tie_embeddings, norm_eps=1e-5, init_std=0.2)
    cfg = PapConfig(model=model_cfg, parallel=ParallelConfig(), data=DataConfig(blend=["-"]),
                    train=TrainConfig(seed=seed))
    model = build_model(arch, cfg)
    checkpoint.save(out, 0, 0, arch, model, None, None, layout={"tp": 1, "pp": 1, "dp": 1,
                                                                "distributed_optimizer": False},
                    config={"model": dataclasses.asdict(model_cfg)})


def layer_cosines(ckpt: str, tokens: torch.Tensor, amplitude: float, increment: float):
    """pap's per-layer input/output cosine means of the checkpoint's model on `tokens` (one
    training-mode forward at TP=1) and the adaptive sparsities planned from them."""
    import dataclasses

    from pap import checkpoint
    from pap.config import DataConfig, ModelConfig, PapConfig, ParallelConfig
    from pap.distributed import init_distributed
    from pap.pruning.adaptive import layer_sparsity
    from pap.pruning.layer_cosine import LayerCosine
    from pap.sharding.reduce_saliency import global_layer_cosine

    init_distributed(1, 1, seed=0)
    source = checkpoint.read(ckpt)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    model_cfg = ModelConfig(**{k: v for k, v in source.config["model"].items() if k in known})
    model_cfg.params_dtype = "fp32"
    cfg = PapConfig(model=model_cfg, parallel=ParallelConfig(), data=DataConfig(blend=["-"], seq_length=tokens.shape[1]))
    from pap.model import build_model

    model = build_model(source.arch, cfg)
    checkpoint.load_model(source, model)
    cosine = LayerCosine()
    cosine.attach(model, counts=True)
    model.train()
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    model(tokens, positions, None)
    means = global_layer_cosine(cosine, source.arch)
    budget = increment * source.arch.num_params()
    return means, layer_sparsity(source.arch, means, amplitude, budget)
