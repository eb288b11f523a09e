"""Per-rank functions of the evaluation tests (run by tests.helpers.run_distributed)."""

from __future__ import annotations


def checkpoint_from_full_state(arch_json: str, full: dict, out: str) -> None:
    """A weights-only pap checkpoint (TP=1) holding exactly the megatron tensors `full`."""
    import dataclasses

    import torch

    from pap import checkpoint
    from pap.arch import Arch
    from pap.config import DataConfig, ModelConfig, PapConfig, ParallelConfig
    from pap.distributed import init_distributed
    from pap.model import build_model

    init_distributed(1, 1, seed=0)
    arch = Arch.from_json(arch_json)
    model_cfg = ModelConfig(vocab_size=arch.vocab_size, hidden_size=arch.hidden_size, head_dim=arch.head_dim,
                            tie_embeddings=arch.tie_embeddings, norm_eps=1e-5, rope_theta=10000.0)
    model = build_model(arch, PapConfig(model=model_cfg, parallel=ParallelConfig(), data=DataConfig(blend=["-"])),
                        draw=False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(full[name])
    checkpoint.save(out, 0, 0, arch, model, None, None,
                    layout={"tp": 1, "pp": 1, "dp": 1, "distributed_optimizer": False},
                    config={"model": dataclasses.asdict(model_cfg)})
