"""Configuration of a Llama whose layers may differ in shape (exported by pap).

`heads_per_group[l][g]`: query heads of layer l served by key/value head g (0 = the KV
head was pruned away). `ffn_per_layer[l]`: SwiGLU width of layer l. `head_dim` is
explicit, so `hidden_size` need not be a multiple of the number of heads.
"""

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig


@strict
class PapLlamaConfig(LlamaConfig):
    model_type = "pap_llama"
    heads_per_group: list | None = None
    ffn_per_layer: list | None = None

    def __post_init__(self, **kwargs):
        if self.heads_per_group is None:
            per_group = self.num_attention_heads // (self.num_key_value_heads or self.num_attention_heads)
            groups = self.num_key_value_heads or self.num_attention_heads
            self.heads_per_group = [[per_group] * groups for _ in range(self.num_hidden_layers)]
        if self.ffn_per_layer is None:
            self.ffn_per_layer = [self.intermediate_size] * self.num_hidden_layers
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Shapes are per layer and head_dim is explicit: only their consistency is checked."""
        if len(self.heads_per_group) != self.num_hidden_layers or len(self.ffn_per_layer) != self.num_hidden_layers:
            raise ValueError("heads_per_group and ffn_per_layer need one entry per layer")


__all__ = ["PapLlamaConfig"]
