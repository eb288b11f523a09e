"""Hugging Face Llama `config.json` <-> pap `Arch` + model settings."""

from __future__ import annotations

import json
from pathlib import Path

from pap.arch import Arch
from pap.config import ModelConfig
from pap.errors import PapError

LLAMA_ARCHITECTURE = "LlamaForCausalLM"
REMOTE_ARCHITECTURE = "PapLlamaForCausalLM"


def read_hf_config(hf_dir: str, make_vocab_size_divisible_by: int = 128):
    """(Arch, ModelConfig, torch dtype name) of the Llama checkpoint in `hf_dir`."""
    path = Path(hf_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise PapError(f"{path}: not found; --hf must be a Hugging Face model directory") from None
    except json.JSONDecodeError as exc:
        raise PapError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None

    def need(key):
        if key not in cfg:
            raise PapError(f"{path}: missing field '{key}'")
        return cfg[key]

    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" and LLAMA_ARCHITECTURE not in archs:
        raise PapError(f"{path}: model_type {cfg.get('model_type')!r} ({', '.join(archs) or 'no architectures'}) "
                       f"is not a Llama model; only LlamaForCausalLM-style checkpoints convert")
    if cfg.get("hidden_act", "silu") != "silu":
        raise PapError(f"{path}: hidden_act {cfg['hidden_act']!r} is not supported (SwiGLU with silu only)")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise PapError(f"{path}: {key}=true is not supported (bias-free Llama only)")
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or ({} if rope.get("rope_type", "default") == "default" else rope)
    if scaling:
        raise PapError(f"{path}: RoPE scaling {scaling.get('rope_type') or scaling.get('type')!r} is not supported; "
                       f"only plain RoPE (rope_type default) converts")
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


def hf_loadable_without_code(arch: Arch) -> bool:
    """Whether a plain LlamaForCausalLM can hold `arch` (and transformers accepts its config)."""
    groups = set(arch.heads_per_group[0])
    return (arch.is_uniform and len(groups) == 1 and 0 not in groups
            and arch.hidden_size % arch.num_heads(0) == 0)


def write_hf_config(arch: Arch, model: ModelConfig, dtype: str, remote_code: bool) -> dict:
    """config.json for `arch`: plain Llama, or pap's remote-code Llama for any other shape."""
    cfg = {
        "architectures": [REMOTE_ARCHITECTURE if remote_code else LLAMA_ARCHITECTURE],
        "model_type": "pap_llama" if remote_code else "llama",
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
    if remote_code:
        cfg["heads_per_group"] = [list(g) for g in arch.heads_per_group]
        cfg["ffn_per_layer"] = list(arch.ffn)
        cfg["auto_map"] = {"AutoConfig": "configuration_pap_llama.PapLlamaConfig",
                           "AutoModelForCausalLM": "modeling_pap_llama.PapLlamaForCausalLM"}
    return cfg
