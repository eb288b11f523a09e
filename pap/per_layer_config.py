"""A megatron `TransformerConfig` whose layers may differ in width.

megatron-core builds each layer from `config.get_config_for_layer(n)` when
`heterogeneous_block_specs` is set (transformer_block.py:339) and then checkpoints each
layer under its own key. pap uses that hook with its own shapes: per layer, the number
of query heads (core attention sees as many K/V heads, see `pap.cluster_attention`) and
the FFN width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

from megatron.core.transformer.transformer_config import TransformerConfig


@dataclass
class PerLayerConfig(TransformerConfig):
    """`TransformerConfig` plus optional per-layer (heads, ffn) shapes."""

    layer_shapes: Optional[Tuple[Tuple[int, int], ...]] = None
    """((query heads, FFN width) for each global layer), or None for a uniform model."""

    def get_config_for_layer(self, layer_number: int) -> "PerLayerConfig":
        """The config of global layer `layer_number` (1-based, megatron's convention)."""
        if self.layer_shapes is None:
            return self
        heads, ffn = self.layer_shapes[layer_number - 1]
        return dataclasses.replace(self, num_attention_heads=heads, num_query_groups=heads, ffn_hidden_size=ffn)
