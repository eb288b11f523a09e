"""`DeciLMForCausalLM` for pap's Nemotron-NAS exports: pap's per-layer Llama
(`modeling_pap_llama.py`) read through the `block_configs` of `configuration_nemotron_nas.py`.

Every layer has the config's query heads and `num_attention_heads // n_heads_in_group`
KV heads, consecutive query heads sharing one; weights have Llama's names. Serving engines
(vLLM) use their own implementation of the class and only read the config from here.
"""

from .configuration_nemotron_nas import DeciLMConfig
from .modeling_pap_llama import PapLlamaForCausalLM, PapLlamaModel


class DeciLMModel(PapLlamaModel):
    config_class = DeciLMConfig


class DeciLMForCausalLM(PapLlamaForCausalLM):
    config_class = DeciLMConfig


__all__ = ["DeciLMForCausalLM", "DeciLMModel"]
