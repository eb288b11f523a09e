"""How a pruned model's attention fits Nemotron-NAS's per-layer attention, exactly.

Nemotron-NAS (`DeciLMForCausalLM`, `block_configs`) gives every layer the same number Q of
query heads (`num_attention_heads`) and per layer one `n_heads_in_group` s: the layer has
Q / s KV heads, each serving s consecutive query heads. A pap model has per-layer query
heads in KV groups of any sizes (`Arch.heads_per_group`). Each layer is written as:

* its KV groups cut into chunks of at most s query heads; each chunk gets its own copy of
  the group's key and value head (a group of 5 heads at s = 2 becomes chunks 2, 2, 1 with
  three copies of the same K/V);
* each chunk padded to s heads with zero query heads: zero `q_proj` rows and zero
  `o_proj` columns, so whatever they attend to is multiplied by zero;
* dummy chunks (zero key, value and query heads) until there are Q / s chunks.

The function is unchanged; the cost is the zero heads and the KV copies. `plan` chooses Q
(at least the largest layer's heads) and each layer's s (Q / s KV heads, a divisor of Q)
to add the fewest parameters; `report` says what was added and its FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from pap.arch import Arch

ZERO = None
"""A padded slot: a zero query head (in a chunk) or a zero key/value head (a dummy chunk)."""


@dataclass(frozen=True)
class LayerAttention:
    """One layer written with `len(chunks)` KV heads of `heads_per_chunk` query heads each.

    `chunks[c]` = (source KV group or ZERO, source query heads of that chunk, in order,
    padded with ZERO to `heads_per_chunk`). Source heads are indices into the layer's query
    heads in megatron's order (group-major, removed groups skipped)."""

    heads_per_chunk: int
    chunks: Tuple[Tuple[Optional[int], Tuple[Optional[int], ...]], ...]

    @property
    def kv_heads(self) -> int:
        return len(self.chunks)


@dataclass(frozen=True)
class AttentionPlan:
    query_heads: int
    """Q: `num_attention_heads` of the export, every layer."""
    layers: Tuple[LayerAttention, ...]

    def padded_arch(self, arch: Arch) -> Arch:
        """The (unpruned-looking) `Arch` the export's tensors have: even groups per layer."""
        return Arch(vocab_size=arch.vocab_size, padded_vocab_size=arch.padded_vocab_size,
                    hidden_size=arch.hidden_size, head_dim=arch.head_dim,
                    heads_per_group=[[layer.heads_per_chunk] * layer.kv_heads for layer in self.layers],
                    ffn=list(arch.ffn), tie_embeddings=arch.tie_embeddings)


def _live_groups(heads_per_group: Sequence[int]) -> List[int]:
    return [n for n in heads_per_group if n > 0]


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _fewest_kv_heads(groups: Sequence[int], query_heads: int) -> int:
    """The fewest KV heads d (a divisor of Q) whose chunks of Q / d heads hold `groups`."""
    for kv in _divisors(query_heads):
        size = query_heads // kv
        if sum(-(-n // size) for n in groups) <= kv:
            return kv
    raise AssertionError("unreachable: d = Q always holds every group")


def _layer(groups: Sequence[int], query_heads: int, kv_heads: int) -> LayerAttention:
    size = query_heads // kv_heads
    chunks, first = [], 0
    for group, n in enumerate(groups):
        heads = list(range(first, first + n))
        for start in range(0, n, size):
            part = heads[start:start + size]
            chunks.append((group, tuple(part) + (ZERO,) * (size - len(part))))
        first += n
    chunks += [(ZERO, (ZERO,) * size)] * (kv_heads - len(chunks))
    return LayerAttention(size, tuple(chunks))


def plan(arch: Arch, max_query_heads: Optional[int] = None) -> AttentionPlan:
    """The layout adding the fewest parameters: Q from the largest layer's heads up to twice
    that (or `max_query_heads`), each layer at its fewest KV heads for that Q. A zero query
    head costs its `q_proj` rows and `o_proj` columns, a KV copy or dummy its `k_proj` and
    `v_proj` rows: the same 2 x head_dim x hidden each, so the count of added head units is
    the measure (ties: the smaller Q)."""
    per_layer = [_live_groups(groups) for groups in arch.heads_per_group]
    if any(not groups for groups in per_layer):
        raise ValueError("a layer without attention heads has no Nemotron-NAS form here (no_op is not written)")
    largest = max(sum(groups) for groups in per_layer)
    best = None
    for query_heads in range(largest, (max_query_heads or 2 * largest) + 1):
        kv = [_fewest_kv_heads(groups, query_heads) for groups in per_layer]
        added = sum((query_heads - sum(groups)) + (d - len(groups)) for groups, d in zip(per_layer, kv))
        if best is None or added < best[0]:
            best = (added, query_heads, kv)
    _, query_heads, kv = best
    return AttentionPlan(query_heads, tuple(_layer(groups, query_heads, d) for groups, d in zip(per_layer, kv)))


def report(arch: Arch, attention: AttentionPlan, seq_length: int = 2048) -> str:
    """One line: the zero heads and KV copies added, and their parameter and FLOP cost."""
    padded = attention.padded_arch(arch)
    zero_heads = sum(attention.query_heads - arch.num_heads(l) for l in range(arch.num_layers))
    extra_kv = sum(layer.kv_heads - arch.num_kv_heads(l) for l, layer in enumerate(attention.layers))
    params, padded_params = arch.num_params(), padded.num_params()
    flops, padded_flops = arch.flops_per_token(seq_length), padded.flops_per_token(seq_length)
    if not zero_heads and not extra_kv:
        return "nemotron-nas: no padding (every layer's KV groups are even)"
    return (f"nemotron-nas: padded to {attention.query_heads} query heads per layer: {zero_heads} zero query heads "
            f"and {extra_kv} extra KV heads (copies or zero) over {arch.num_layers} layers; "
            f"+{padded_params - params:,} parameters ({(padded_params / params - 1) * 100:.2f}%), "
            f"+{(padded_flops / flops - 1) * 100:.2f}% FLOPs per token at {seq_length} tokens")
