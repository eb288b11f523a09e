"""A Llama whose layers may differ in shape, with cluster attention (exported by pap).

Differences from `LlamaForCausalLM`, nothing else:
* each layer has its own number of query heads, key/value heads and FFN width;
* a key/value head may serve any number of query heads (`kv_index` maps each query head
  to its KV head), which plain GQA cannot express after query heads are pruned.
Everything else (RoPE, RMSNorm, caches, attention kernels, generation) is Llama's.
"""

import torch
from torch import nn

from transformers.models.llama.modeling_llama import (
    ACT2FN,
    ALL_ATTENTION_FUNCTIONS,
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from .configuration_pap_llama import PapLlamaConfig


class PapLlamaAttention(LlamaAttention):
    def __init__(self, config: PapLlamaConfig, layer_idx: int):
        nn.Module.__init__(self)
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        groups = [n for n in config.heads_per_group[layer_idx] if n > 0]
        num_heads, num_kv = sum(groups), len(groups)
        self.num_key_value_groups = 1  # K/V are expanded per query head with kv_index below
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, num_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, num_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden, bias=bias)
        # Query head i reads KV head kv_of_head[i]. Kept as a plain list, not a buffer:
        # transformers builds models on the meta device, where a non-persistent buffer
        # would come back uninitialised.
        self.kv_of_head = [g for g, n in enumerate(groups) for _ in range(n)]
        self._kv_index = {}

    def kv_index(self, device):
        if device not in self._kv_index:
            self._kv_index[device] = torch.tensor(self.kv_of_head, dtype=torch.long, device=device)
        return self._kv_index[device]

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                cache=None, **kwargs):
        # transformers renamed the decoder layer's `past_key_values` argument to `cache`
        # (deprecated alias until 5.40); accept either so the KV cache is always updated.
        cache = cache if cache is not None else past_key_values
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)
        index = self.kv_index(key_states.device)
        key_states = key_states.index_select(1, index)
        value_states = value_states.index_select(1, index)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                                    eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling, **kwargs)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class PapLlamaMLP(nn.Module):
    def __init__(self, config: PapLlamaConfig, layer_idx: int):
        super().__init__()
        width, hidden = config.ffn_per_layer[layer_idx], config.hidden_size
        self.gate_proj = nn.Linear(hidden, width, bias=config.mlp_bias)
        self.up_proj = nn.Linear(hidden, width, bias=config.mlp_bias)
        self.down_proj = nn.Linear(width, hidden, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class PapLlamaDecoderLayer(LlamaDecoderLayer):
    def __init__(self, config: PapLlamaConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.self_attn = PapLlamaAttention(config, layer_idx)
        self.mlp = PapLlamaMLP(config, layer_idx)


class PapLlamaModel(LlamaModel):
    config_class = PapLlamaConfig

    def __init__(self, config: PapLlamaConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(PapLlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.post_init()


class PapLlamaForCausalLM(LlamaForCausalLM):
    config_class = PapLlamaConfig

    def __init__(self, config: PapLlamaConfig):
        super().__init__(config)
        self.model = PapLlamaModel(config)
        self.post_init()


__all__ = ["PapLlamaForCausalLM", "PapLlamaModel"]
