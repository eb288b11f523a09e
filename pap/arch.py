"""`Arch`: the run-time architecture of a (possibly pruned) Llama-style GPT.

Pruning changes shapes while training runs, so the shape is state, not config: it is
saved in every checkpoint and read by exporters. Per layer it records how many query
heads each key/value group serves (GQA groups may become unequal after pruning) and the
FFN width; the hidden size and head width are global.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import List

from pap.errors import PapError


def pad_vocab_size(vocab_size: int, divisible_by: int) -> int:
    """Embedding rows: vocab rounded up to a multiple of `divisible_by` (TP-independent)."""
    return -(-vocab_size // divisible_by) * divisible_by


@dataclass
class Arch:
    """Shapes of every prunable dimension of the model.

    `heads_per_group[l][g]` is the number of query heads of layer l that share KV head g;
    `ffn[l]` is the SwiGLU width of layer l.
    """

    vocab_size: int
    padded_vocab_size: int
    hidden_size: int
    head_dim: int
    heads_per_group: List[List[int]]
    ffn: List[int]
    tie_embeddings: bool

    def __post_init__(self):
        if len(self.heads_per_group) != len(self.ffn):
            raise PapError(f"Arch: {len(self.heads_per_group)} attention layers but {len(self.ffn)} FFN widths")
        if self.padded_vocab_size < self.vocab_size:
            raise PapError("Arch: padded_vocab_size is smaller than vocab_size")

    @classmethod
    def from_model_config(cls, model) -> "Arch":
        """The dense starting architecture described by a `pap.config.ModelConfig`."""
        head_dim = model.head_dim or model.hidden_size // model.num_attention_heads
        per_group = model.num_attention_heads // model.num_query_groups
        return cls(
            vocab_size=model.vocab_size,
            padded_vocab_size=pad_vocab_size(model.vocab_size, model.make_vocab_size_divisible_by),
            hidden_size=model.hidden_size,
            head_dim=head_dim,
            heads_per_group=[[per_group] * model.num_query_groups for _ in range(model.num_layers)],
            ffn=[model.ffn_hidden_size] * model.num_layers,
            tie_embeddings=model.tie_embeddings,
        )

    # ---- shape queries -------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.ffn)

    def num_heads(self, layer: int) -> int:
        """Query heads of `layer`."""
        return sum(self.heads_per_group[layer])

    def num_kv_heads(self, layer: int) -> int:
        """Key/value heads of `layer` that still serve at least one query head."""
        return sum(1 for n in self.heads_per_group[layer] if n > 0)

    @property
    def is_uniform(self) -> bool:
        """True when every layer has the same shape and every KV group the same size."""
        first_groups = self.heads_per_group[0]
        return (
            all(g == first_groups for g in self.heads_per_group)
            and len(set(first_groups)) == 1
            and len(set(self.ffn)) == 1
        )

    # ---- counting -------------------------------------------------------------------------
    def layer_params(self, layer: int) -> int:
        """Parameters of one transformer layer (two RMSNorms, QKV, output proj, SwiGLU)."""
        h, d = self.hidden_size, self.head_dim
        q, kv, f = self.num_heads(layer), self.num_kv_heads(layer), self.ffn[layer]
        attention = (q + 2 * kv) * d * h + q * d * h
        mlp = 3 * f * h
        return attention + mlp + 2 * h

    def num_params(self) -> int:
        """Exact parameter count of the model as built (padded vocab; a tied matrix once)."""
        embedding = self.padded_vocab_size * self.hidden_size
        output = 0 if self.tie_embeddings else embedding
        return embedding + output + self.hidden_size + sum(self.layer_params(l) for l in range(self.num_layers))

    def flops_per_token(self, seq_length: int) -> int:
        """Training FLOPs per token (forward + backward = 3x forward), Megatron-LM's convention.

        Every matmul counts 2 FLOPs per multiply-add; attention scores and the weighted sum
        count the full (non-causal) `seq_length` window, as Megatron-LM's
        `num_floating_point_operations` does, so MFU figures compare with its logs.
        """
        h, d = self.hidden_size, self.head_dim
        forward = 2 * self.padded_vocab_size * h  # output layer
        for layer in range(self.num_layers):
            q, kv, f = self.num_heads(layer), self.num_kv_heads(layer), self.ffn[layer]
            forward += 2 * ((q + 2 * kv) * d * h + q * d * h + 3 * f * h)
            forward += 2 * 2 * q * d * seq_length
        return 3 * forward

    # ---- serialisation --------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        data = json.loads(text)
        try:
            return cls(**data)
        except TypeError as exc:
            raise PapError(f"Arch JSON does not match the Arch fields: {exc}") from None
