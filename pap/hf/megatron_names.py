"""Parameter names of pap's megatron-core GPTModel (local layer spec), as conversion uses them.

Names of per-layer tensors are templates with `{}` for the layer index. Every export
family maps these same names; only the Hugging Face side differs between families.
Parsing a layer's name is `pap.params`'s, the one table of pap's weights.
"""

from __future__ import annotations

from typing import Optional, Tuple

from pap.params import EMBEDDING, FINAL_NORM, OUTPUT_LAYER, parse_layer_name

OUTPUT = OUTPUT_LAYER

INPUT_NORM = "decoder.layers.{}.input_layernorm.weight"
QKV = "decoder.layers.{}.self_attention.linear_qkv.weight"
ATTENTION_OUT = "decoder.layers.{}.self_attention.linear_proj.weight"
PRE_MLP_NORM = "decoder.layers.{}.pre_mlp_layernorm.weight"
FC1 = "decoder.layers.{}.mlp.linear_fc1.weight"
FC2 = "decoder.layers.{}.mlp.linear_fc2.weight"

__all__ = ["EMBEDDING", "FINAL_NORM", "OUTPUT", "INPUT_NORM", "QKV", "ATTENTION_OUT", "PRE_MLP_NORM", "FC1", "FC2",
           "split_layer"]


def split_layer(name: str) -> Tuple[str, Optional[int]]:
    """'decoder.layers.3.mlp.linear_fc2.weight' -> ('decoder.layers.{}.mlp.linear_fc2.weight', 3);
    a name outside the layers comes back unchanged with layer None."""
    parsed = parse_layer_name(name)
    if parsed is None:
        return name, None
    layer, leaf = parsed
    return f"decoder.layers.{{}}.{leaf}", layer
