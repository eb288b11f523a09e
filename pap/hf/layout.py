"""Names and tensor layouts of a Llama model in Hugging Face and in megatron-core.

The one place that knows both sides. Names are templates with `{}` for the layer index
(litgpt's convention). Two megatron layouts need more than renaming:

* `linear_qkv` stacks, for each KV group g in order, the rows of g's query heads, then
  K_g, then V_g: `[q..q k v | q..q k v | ...]`. After pruning, groups may hold different
  numbers of query heads (`Arch.heads_per_group`); groups with none are gone.
* `linear_fc1` is `[gate; up]` at TP=1 (megatron splits it per TP rank with stride 2,
  which `pap.sharding.full_state` undoes), so the full tensor is a plain concatenation.

Everything here works on full (TP=1) tensors; RoPE needs no permutation because both
sides use the rotate-half convention.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

# megatron-core name (local layer spec) -> Hugging Face name, for one-to-one tensors.
DIRECT: Dict[str, str] = {
    "embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "decoder.final_layernorm.weight": "model.norm.weight",
    "output_layer.weight": "lm_head.weight",
    "decoder.layers.{}.input_layernorm.weight": "model.layers.{}.input_layernorm.weight",
    "decoder.layers.{}.self_attention.linear_proj.weight": "model.layers.{}.self_attn.o_proj.weight",
    "decoder.layers.{}.pre_mlp_layernorm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "decoder.layers.{}.mlp.linear_fc2.weight": "model.layers.{}.mlp.down_proj.weight",
}
QKV = "decoder.layers.{}.self_attention.linear_qkv.weight"
HF_Q, HF_K, HF_V = ("model.layers.{}.self_attn.q_proj.weight", "model.layers.{}.self_attn.k_proj.weight",
                    "model.layers.{}.self_attn.v_proj.weight")
FC1 = "decoder.layers.{}.mlp.linear_fc1.weight"
HF_GATE, HF_UP = "model.layers.{}.mlp.gate_proj.weight", "model.layers.{}.mlp.up_proj.weight"
EMBEDDING, OUTPUT = "embedding.word_embeddings.weight", "output_layer.weight"


def kept_groups(heads_per_group: List[int]) -> List[int]:
    """Query heads of the KV groups that still exist (groups with none are removed)."""
    return [n for n in heads_per_group if n > 0]


def qkv_to_megatron(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads_per_group: List[int],
                    head_dim: int) -> torch.Tensor:
    """HF q/k/v projections -> megatron's per-group interleaved `linear_qkv` weight."""
    groups = kept_groups(heads_per_group)
    q_heads = q.reshape(sum(groups), head_dim, -1)
    k_heads = k.reshape(len(groups), head_dim, -1)
    v_heads = v.reshape(len(groups), head_dim, -1)
    blocks, first = [], 0
    for g, n in enumerate(groups):
        blocks += [q_heads[first:first + n], k_heads[g:g + 1], v_heads[g:g + 1]]
        first += n
    return torch.cat(blocks).reshape(-1, q.shape[-1])


def qkv_from_megatron(qkv: torch.Tensor, heads_per_group: List[int], head_dim: int
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron `linear_qkv` weight -> HF (q, k, v) projection weights."""
    groups = kept_groups(heads_per_group)
    heads = qkv.reshape(-1, head_dim, qkv.shape[-1])
    q, k, v, first = [], [], [], 0
    for n in groups:
        q.append(heads[first:first + n])
        k.append(heads[first + n:first + n + 1])
        v.append(heads[first + n + 1:first + n + 2])
        first += n + 2
    hidden = qkv.shape[-1]
    return (torch.cat(q).reshape(-1, hidden), torch.cat(k).reshape(-1, hidden), torch.cat(v).reshape(-1, hidden))


def fc1_to_megatron(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.cat([gate, up])


def fc1_from_megatron(fc1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    gate, up = fc1.chunk(2)
    return gate, up


# ---- --expand-kv: an exactly equivalent plain Llama ------------------------------------------
# Every query head gets its own copy of its KV head; layers with fewer heads or a narrower
# FFN are padded with zero query rows / zero o_proj columns (a head that adds nothing) and
# zero gate/up rows / down columns (silu(0) * 0 = 0), so outputs are unchanged.
def expanded_arch(arch):
    """The plain-Llama shape `--expand-kv` writes for `arch`."""
    from dataclasses import replace

    heads = max(arch.num_heads(l) for l in range(arch.num_layers))
    return replace(arch, heads_per_group=[[1] * heads for _ in range(arch.num_layers)],
                   ffn=[max(arch.ffn)] * arch.num_layers)


def expand_heads(q, k, v, o, heads_per_group, head_dim, heads):
    """(q, k, v, o_proj) with one KV head per query head, padded to `heads` query heads."""
    groups = kept_groups(heads_per_group)
    index = torch.tensor([g for g, n in enumerate(groups) for _ in range(n)])
    hidden = q.shape[-1]
    pad_rows = (heads - len(index)) * head_dim

    def per_query(x):
        return x.reshape(len(groups), head_dim, hidden)[index].reshape(-1, hidden)

    def pad(x):
        return torch.cat([x, x.new_zeros(pad_rows, hidden)]) if pad_rows else x

    o_padded = torch.cat([o, o.new_zeros(o.shape[0], pad_rows)], dim=1) if pad_rows else o
    return pad(q), pad(per_query(k)), pad(per_query(v)), o_padded


def pad_ffn(gate, up, down, width):
    """SwiGLU weights padded with zero channels to `width`."""
    extra = width - gate.shape[0]
    if not extra:
        return gate, up, down
    rows = gate.new_zeros(extra, gate.shape[1])
    return torch.cat([gate, rows]), torch.cat([up, rows]), torch.cat([down, down.new_zeros(down.shape[0], extra)], 1)
