"""transformers' `LlamaForCausalLM`: the family of uniform models, both directions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from pap.arch import Arch
from pap.config import ModelConfig
from pap.errors import PapError
from pap.hf import megatron_names as mc
from pap.hf.families.base import ExportFamily, TensorMap
from pap.hf.families.transforms import RENAME, SPLIT_GATED_MLP, SPLIT_QKV, VOCAB_ROWS, untied_only

LAYER = "model.layers.{}."

LLAMA_TENSORS = (
    TensorMap((mc.EMBEDDING,), ("model.embed_tokens.weight",), VOCAB_ROWS),
    TensorMap((mc.FINAL_NORM,), ("model.norm.weight",), RENAME),
    TensorMap((mc.OUTPUT,), ("lm_head.weight",), VOCAB_ROWS, present=untied_only),
    TensorMap((mc.INPUT_NORM,), (LAYER + "input_layernorm.weight",), RENAME),
    TensorMap((mc.QKV, mc.ATTENTION_OUT), tuple(LAYER + f"self_attn.{p}_proj.weight" for p in "qkvo"), SPLIT_QKV),
    TensorMap((mc.PRE_MLP_NORM,), (LAYER + "post_attention_layernorm.weight",), RENAME),
    TensorMap((mc.FC1, mc.FC2), tuple(LAYER + f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
              SPLIT_GATED_MLP),
)
"""Llama's tensors; also those of every Llama-derived class whose layers only differ in shape."""


class LlamaFamily(ExportFamily):
    """A plain `LlamaForCausalLM`: loads without remote code everywhere Llama does (vLLM, ...)."""

    name = "llama"
    title = "Llama"
    architecture = "LlamaForCausalLM"
    model_type = "llama"
    tensors = LLAMA_TENSORS
    imports = True

    def accepts(self, arch: Arch) -> Optional[str]:
        groups = arch.heads_per_group[0]
        if any(g != groups for g in arch.heads_per_group) or len(set(arch.ffn)) > 1:
            return "its layers differ in shape"
        if len(set(groups)) > 1:
            return "its KV heads serve different numbers of query heads"
        if 0 in groups:
            return "it has no attention heads"
        if arch.hidden_size % arch.num_heads(0):
            # transformers checks hidden_size % num_attention_heads even with head_dim set
            return f"its hidden size {arch.hidden_size} is not a multiple of its {arch.num_heads(0)} heads"
        return None

    def config(self, arch: Arch, model: ModelConfig, dtype: str) -> dict:
        return {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": arch.vocab_size,
            "hidden_size": arch.hidden_size,
            "intermediate_size": max(arch.ffn),
            "num_hidden_layers": arch.num_layers,
            "num_attention_heads": arch.num_heads(0),
            "num_key_value_heads": arch.num_kv_heads(0),
            "head_dim": arch.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": 8192,
            "rms_norm_eps": model.norm_eps,
            "rope_theta": model.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": model.rope_theta},
            "tie_word_embeddings": arch.tie_embeddings,
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": dtype,
            "use_cache": True,
        }

    def read_config(self, hf_config: dict, path: Path, make_vocab_size_divisible_by: int
                    ) -> Tuple[Arch, ModelConfig, str]:
        cfg = hf_config

        def need(key):
            if key not in cfg:
                raise PapError(f"{path}: missing field '{key}'")
            return cfg[key]

        if cfg.get("hidden_act", "silu") != "silu":
            raise PapError(f"{path}: hidden_act {cfg['hidden_act']!r} is not supported (SwiGLU with silu only)")
        for key in ("attention_bias", "mlp_bias"):
            if cfg.get(key):
                raise PapError(f"{path}: {key}=true is not supported (bias-free Llama only)")
        rope = cfg.get("rope_parameters") or {}
        scaling = cfg.get("rope_scaling") or ({} if rope.get("rope_type", "default") == "default" else rope)
        if scaling:
            raise PapError(f"{path}: RoPE scaling {scaling.get('rope_type') or scaling.get('type')!r} is not "
                           f"supported; only plain RoPE (rope_type default) converts")
        heads, kv = need("num_attention_heads"), cfg.get("num_key_value_heads") or need("num_attention_heads")
        if heads % kv:
            raise PapError(f"{path}: num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv})")
        hidden = need("hidden_size")
        model = ModelConfig(
            vocab_size=need("vocab_size"),
            make_vocab_size_divisible_by=make_vocab_size_divisible_by,
            hidden_size=hidden,
            num_layers=need("num_hidden_layers"),
            num_attention_heads=heads,
            num_query_groups=kv,
            head_dim=cfg.get("head_dim") or hidden // heads,
            ffn_hidden_size=need("intermediate_size"),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        )
        dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
        return Arch.from_model_config(model), model, dtype
