"""Global tensor names: PP stage offsets, and Transformer Engine's fused-norm names."""

from types import SimpleNamespace

from pap.sharding.full_state import global_name


def stage(first_layer: int, layers: int):
    """A stand-in for a PP stage's GPTModel: only what global_name reads."""
    return SimpleNamespace(decoder=SimpleNamespace(
        layers=[SimpleNamespace(layer_number=first_layer + i + 1) for i in range(layers)]))


def test_stage_offset_applies_to_layer_names_only():
    model = stage(first_layer=4, layers=2)
    assert global_name(model, "decoder.layers.1.mlp.linear_fc2.weight") == "decoder.layers.5.mlp.linear_fc2.weight"
    assert global_name(model, "embedding.word_embeddings.weight") == "embedding.word_embeddings.weight"
    assert global_name(model, "decoder.final_layernorm.weight") == "decoder.final_layernorm.weight"


def test_transformer_engine_norms_take_the_local_names():
    model = stage(first_layer=2, layers=2)
    assert global_name(model, "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight") \
        == "decoder.layers.2.input_layernorm.weight"
    assert global_name(model, "decoder.layers.1.mlp.linear_fc1.layer_norm_weight") \
        == "decoder.layers.3.pre_mlp_layernorm.weight"
    assert global_name(model, "decoder.layers.1.self_attention.linear_qkv.weight") \
        == "decoder.layers.3.self_attention.linear_qkv.weight"
