"""Configuration of NVIDIA's Nemotron-NAS / DeciLM layout (`model_type: nemotron-nas`),
as pap exports it: one `block_configs` entry per layer.

* `attention.n_heads_in_group`: query heads per KV head in that layer, so the layer has
  `num_attention_heads // n_heads_in_group` KV heads (query heads are the same in every
  layer);
* `ffn.intermediate_size` (exact width; vLLM reads it when the FFN entry has no
  `ffn_mult`) or `ffn.ffn_mult` (width = 2 * ffn_mult * hidden / 3 rounded up to a
  multiple of 256, what every engine reads);
* `no_op` and `replace_with_linear` are false (pap never writes empty or linear blocks).

Entries are dicts that also answer attribute access (`block.attention.n_heads_in_group`),
as serving engines read them, and serialise back to the same JSON. Built on pap's
per-layer Llama (`configuration_pap_llama.py`), whose `heads_per_group` and
`ffn_per_layer` are derived here from `block_configs`.
"""

from huggingface_hub.dataclasses import strict

from .configuration_pap_llama import PapLlamaConfig


class BlockPart(dict):
    """A `block_configs` entry or sub-entry: a dict whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def ffn_mult_to_width(ffn_mult: float, hidden_size: int) -> int:
    """The FFN width `ffn_mult` stands for: int(2 * ffn_mult * hidden / 3), rounded up to a
    multiple of 256 (the formula of every Nemotron-NAS reader)."""
    width = int(2 * ffn_mult * hidden_size / 3)
    return -(-width // 256) * 256


def _part(value):
    if isinstance(value, dict):
        return BlockPart({key: _part(item) for key, item in value.items()})
    return value


@strict
class DeciLMConfig(PapLlamaConfig):
    model_type = "nemotron-nas"
    block_configs: list | None = None

    def __post_init__(self, **kwargs):
        if self.block_configs is None:
            # A config built with no arguments (transformers does, to tell the defaults):
            # uniform layers, as pap's Llama.
            super().__post_init__(**kwargs)
            return
        self.block_configs = [_part(block) for block in self.block_configs]
        heads_per_group, widths = [], []
        for index, block in enumerate(self.block_configs):
            attention, ffn = block["attention"], block["ffn"]
            if attention.get("no_op") or attention.get("replace_with_linear") or ffn.get("no_op") \
                    or ffn.get("replace_with_linear"):
                raise ValueError(f"block_configs[{index}]: no_op and replace_with_linear blocks are not supported")
            per_kv = attention["n_heads_in_group"]
            if self.num_attention_heads % per_kv:
                raise ValueError(f"block_configs[{index}]: n_heads_in_group {per_kv} does not divide "
                                 f"num_attention_heads {self.num_attention_heads}")
            heads_per_group.append([per_kv] * (self.num_attention_heads // per_kv))
            if ffn.get("ffn_mult") is not None:
                widths.append(ffn_mult_to_width(ffn["ffn_mult"], self.hidden_size))
            else:
                widths.append(ffn["intermediate_size"])
        self.heads_per_group, self.ffn_per_layer = heads_per_group, widths
        super().__post_init__(**kwargs)


__all__ = ["DeciLMConfig"]
