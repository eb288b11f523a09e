import pytest

from pap.arch import Arch, pad_vocab_size
from pap.config import ModelConfig
from pap.errors import PapError


def tiny_arch(**kw):
    return Arch.from_model_config(ModelConfig(**{"vocab_size": 1000, "hidden_size": 64, "num_layers": 3,
                                                 "num_attention_heads": 4, "num_query_groups": 2,
                                                 "ffn_hidden_size": 96, **kw}))


def test_dense_arch_shape():
    arch = tiny_arch()
    assert arch.padded_vocab_size == 1024 and arch.head_dim == 16
    assert arch.heads_per_group == [[2, 2]] * 3 and arch.ffn == [96] * 3
    assert arch.is_uniform and arch.num_heads(0) == 4 and arch.num_kv_heads(0) == 2


def test_param_count_by_hand():
    arch = tiny_arch()
    h, d, v = 64, 16, 1024
    layer = (4 + 2 * 2) * d * h + 4 * d * h + 3 * 96 * h + 2 * h
    assert arch.num_params() == 2 * v * h + h + 3 * layer
    assert tiny_arch(tie_embeddings=True).num_params() == v * h + h + 3 * layer


def test_pruned_shapes_count_and_flops():
    arch = tiny_arch()
    arch.heads_per_group[1] = [0, 3]   # KV group 0 lost all its query heads; group 1 kept three
    arch.ffn[2] = 50
    assert not arch.is_uniform
    assert arch.num_heads(1) == 3 and arch.num_kv_heads(1) == 1
    dense = tiny_arch()
    removed = (1 * 16 * 64) * 2 + (2 * 16 * 64) + 3 * 46 * 64  # q rows + proj cols, k+v rows, ffn
    assert dense.num_params() - arch.num_params() == removed
    assert arch.flops_per_token(128) < dense.flops_per_token(128)


def test_flops_formula():
    arch = tiny_arch()
    h, d, s = 64, 16, 128
    per_layer = 2 * ((8 * d * h) + 4 * d * h + 3 * 96 * h) + 4 * 4 * d * s
    assert arch.flops_per_token(s) == 3 * (2 * 1024 * h + 3 * per_layer)


def test_json_round_trip():
    arch = tiny_arch()
    arch.ffn[0] = 10
    assert Arch.from_json(arch.to_json()) == arch
    with pytest.raises(PapError):
        Arch.from_json('{"hidden_size": 3}')


def test_pad_vocab():
    assert pad_vocab_size(4096, 128) == 4096 and pad_vocab_size(4097, 128) == 4224
