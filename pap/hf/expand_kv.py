"""`--expand-kv`: the same function as a model with one KV head per query head and equal layers.

Every query head gets its own copy of its KV head; layers with fewer heads or a narrower
FFN are padded to the widest layer with zero query heads (zero query rows and zero
`linear_proj` columns: a head that adds nothing) and zero FFN channels (zero gate/up rows
and `linear_fc2` columns: silu(0) * 0 = 0), so outputs are unchanged. The result is a
megatron-layout model of `expanded_arch(arch)`, which any export family then writes; it
is uniform, so a plain Llama holds it whenever the hidden size is a multiple of the heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Iterator

import torch

from pap.arch import Arch
from pap.hf import layout
from pap.hf.megatron_names import ATTENTION_OUT, FC1, FC2, QKV, split_layer


def expanded_arch(arch: Arch) -> Arch:
    """The shape `--expand-kv` writes for `arch`: as many single-head KV groups as the layer
    with the most query heads has heads, and the widest FFN, in every layer."""
    heads = max(arch.num_heads(l) for l in range(arch.num_layers))
    return replace(arch, heads_per_group=[[1] * heads for _ in range(arch.num_layers)],
                   ffn=[max(arch.ffn)] * arch.num_layers)


class ExpandedState(Mapping):
    """Full megatron tensors of `expanded_arch(arch)`, made from those of `arch` on access.

    Lazy so that an export holds one expanded tensor at a time, not a second model.
    Names and their order are those of `full`.
    """

    def __init__(self, full: Mapping, arch: Arch):
        self.full, self.arch, self.wide = full, arch, expanded_arch(arch)

    def __iter__(self) -> Iterator[str]:
        return iter(self.full)

    def __len__(self) -> int:
        return len(self.full)

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self.full[name]
        template, layer = split_layer(name)
        if template == QKV:
            return self._qkv(tensor, layer)
        if template == ATTENTION_OUT:
            return _pad_columns(tensor, self._missing_heads(layer) * self.arch.head_dim)
        if template == FC1:
            gate, up = layout.fc1_from_megatron(tensor)
            extra = self.wide.ffn[layer] - gate.shape[0]
            return layout.fc1_to_megatron(_pad_rows(gate, extra), _pad_rows(up, extra))
        if template == FC2:
            return _pad_columns(tensor, self.wide.ffn[layer] - tensor.shape[1])
        return tensor

    def _missing_heads(self, layer: int) -> int:
        return self.wide.num_heads(layer) - self.arch.num_heads(layer)

    def _qkv(self, qkv: torch.Tensor, layer: int) -> torch.Tensor:
        groups, head_dim = self.arch.heads_per_group[layer], self.arch.head_dim
        q, k, v = layout.qkv_from_megatron(qkv, groups, head_dim)
        kv_of_head = torch.tensor([g for g, n in enumerate(layout.kept_groups(groups)) for _ in range(n)])
        hidden = qkv.shape[-1]

        def per_query_head(x):
            return x.reshape(-1, head_dim, hidden)[kv_of_head].reshape(-1, hidden)

        pad = self._missing_heads(layer) * head_dim
        return layout.qkv_to_megatron(_pad_rows(q, pad), _pad_rows(per_query_head(k), pad),
                                      _pad_rows(per_query_head(v), pad), self.wide.heads_per_group[layer], head_dim)


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(rows, x.shape[1])]) if rows else x


def _pad_columns(x: torch.Tensor, columns: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(x.shape[0], columns)], dim=1) if columns else x
