"""The tensor transforms export families' tables use."""

from __future__ import annotations

from typing import Optional

import torch

from pap.arch import Arch
from pap.hf import layout
from pap.hf.families.base import Transform


class Rename(Transform):
    """The same tensor under another name."""

    def to_hf(self, mcore, arch, layer):
        return tuple(mcore)

    def to_mcore(self, index, read, arch, layer):
        return read(index)


class VocabRows(Transform):
    """An embedding-shaped matrix: megatron pads the vocabulary rows to
    `arch.padded_vocab_size`, Hugging Face has `arch.vocab_size` of them."""

    def to_hf(self, mcore, arch, layer):
        (tensor,) = mcore
        return (tensor[: arch.vocab_size],)

    def to_mcore(self, index, read, arch, layer):
        tensor = read(index)
        if tensor.shape[0] < arch.padded_vocab_size:
            padding = tensor.new_zeros(arch.padded_vocab_size - tensor.shape[0], tensor.shape[1])
            tensor = torch.cat([tensor, padding])  # rows no token id reaches; zero like Megatron-LM's converters
        return tensor


class SplitQKV(Transform):
    """megatron (`linear_qkv`, `linear_proj`) <-> separate (q, k, v, o) projections, with
    the layer's KV groups from `arch.heads_per_group` (any sizes, removed groups skipped)."""

    def to_hf(self, mcore, arch, layer):
        qkv, out = mcore
        return (*layout.qkv_from_megatron(qkv, arch.heads_per_group[layer], arch.head_dim), out)

    def to_mcore(self, index, read, arch, layer):
        if index == 1:
            return read(3)
        return layout.qkv_to_megatron(read(0), read(1), read(2), arch.heads_per_group[layer], arch.head_dim)


class SplitGatedMLP(Transform):
    """megatron (`linear_fc1` = [gate; up], `linear_fc2`) <-> (gate, up, down) projections."""

    def to_hf(self, mcore, arch, layer):
        fc1, fc2 = mcore
        return (*layout.fc1_from_megatron(fc1), fc2)

    def to_mcore(self, index, read, arch, layer):
        if index == 1:
            return read(2)
        return layout.fc1_to_megatron(read(0), read(1))


RENAME, VOCAB_ROWS, SPLIT_QKV, SPLIT_GATED_MLP = Rename(), VocabRows(), SplitQKV(), SplitGatedMLP()


def untied_only(arch: Arch, layer: Optional[int]) -> bool:
    """`TensorMap.present` of the output layer: a tied model has none of its own."""
    return not arch.tie_embeddings
