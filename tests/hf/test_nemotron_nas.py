"""The Nemotron-NAS (DeciLM) export: any pruned model, padded to the format's per-layer
attention, gives the same logits through the shipped remote code; its config is what the
format's readers expect."""

import json

import pytest
import torch

from tests.hf.test_convert import TOKENS, hf_logits
from tests.hf.test_remote_code import pruned_arch, random_full_state, reference_logits

pytest.importorskip("transformers")


def _export(tmp_path, arch, name="nas"):
    from pap.config import ModelConfig
    from pap.hf.convert import write_hf_dir

    full = random_full_state(arch)
    if arch.tie_embeddings:
        full["output_layer.weight"] = full["embedding.word_embeddings.weight"]  # what the reference reads
    out = write_hf_dir(full, arch, ModelConfig(vocab_size=arch.vocab_size, rope_theta=10000.0, norm_eps=1e-5),
                       str(tmp_path / name), torch.float32, family="nemotron_nas")
    return full, out, json.loads((out / "config.json").read_text())


def test_pruned_model_exports_exactly_with_per_layer_groups(tmp_path):
    """Uneven groups, a pruned KV head, per-layer heads and FFN widths, an odd hidden size."""
    arch = pruned_arch()
    full, out, config = _export(tmp_path, arch)
    assert config["architectures"] == ["DeciLMForCausalLM"] and config["model_type"] == "nemotron-nas"
    query_heads = config["num_attention_heads"]
    assert query_heads >= max(sum(groups) for groups in arch.heads_per_group) == 5
    for block, width in zip(config["block_configs"], arch.ffn):
        assert query_heads % block["attention"]["n_heads_in_group"] == 0
        assert block["ffn"]["intermediate_size"] == width and "ffn_mult" not in block["ffn"]  # exact: vLLM's path
        assert not block["attention"]["no_op"] and not block["ffn"]["no_op"]
    assert config["head_dim"] == 8 and config["hidden_size"] == 45
    for name in ("configuration_nemotron_nas.py", "modeling_nemotron_nas.py", "configuration_pap_llama.py",
                 "modeling_pap_llama.py"):
        assert (out / name).is_file(), name
    torch.testing.assert_close(hf_logits(out, TOKENS, remote=True), reference_logits(full, arch, TOKENS),
                               rtol=1e-5, atol=1e-5)


def test_widths_of_256_are_written_as_ffn_mult_that_every_reader_turns_back(tmp_path):
    from pap.arch import Arch
    from pap.hf.families.nemotron_nas import ffn_mult_for

    arch = Arch(vocab_size=300, padded_vocab_size=384, hidden_size=96, head_dim=32,
                heads_per_group=[[1, 1, 1], [2, 1, 0]], ffn=[256, 512], tie_embeddings=True)
    full, out, config = _export(tmp_path, arch)
    for block, width in zip(config["block_configs"], arch.ffn):
        mult = block["ffn"]["ffn_mult"]
        assert "intermediate_size" not in block["ffn"] and mult == ffn_mult_for(width, 96)
        # the formula of vLLM, SGLang, TensorRT-LLM and megatron-core, restated
        rounded = int(2 * round(mult, 6) * 96 / 3)
        assert -(-rounded // 256) * 256 == width
    # fp32 sums over 512 FFN channels in another order than the reference: 4e-5 seen
    torch.testing.assert_close(hf_logits(out, TOKENS, remote=True), reference_logits(full, arch, TOKENS),
                               rtol=1e-5, atol=1e-4)


def test_padding_plan_is_exact_and_adds_the_fewest_head_units():
    """Each layer's chunks hold every query head once, with its own KV group; no plan with
    Q up to twice the largest layer adds fewer zero query heads and KV copies (brute force)."""
    import itertools

    from pap.arch import Arch
    from pap.hf import nas_padding

    for groups in ([[3, 1], [2, 0, 1], [1, 1, 1, 2], [0, 4]], [[4, 4]], [[5, 1, 1], [1, 1]], [[2, 2], [3]]):
        arch = Arch(vocab_size=10, padded_vocab_size=10, hidden_size=16, head_dim=4, heads_per_group=groups,
                    ffn=[8] * len(groups), tie_embeddings=False)
        plan = nas_padding.plan(arch)
        for layer, attention in zip(groups, plan.layers):
            live = [n for n in layer if n > 0]
            assert plan.query_heads % attention.heads_per_chunk == 0
            assert attention.kv_heads == plan.query_heads // attention.heads_per_chunk
            seen = [h for _, heads in attention.chunks for h in heads if h is not None]
            assert seen == list(range(sum(live)))
            owner = [g for g, n in enumerate(live) for _ in range(n)]
            assert all(owner[h] == g for g, heads in attention.chunks for h in heads if h is not None)
        added = sum(plan.query_heads - sum(l) + a.kv_heads - len([n for n in l if n]) for l, a in zip(groups, plan.layers))
        largest = max(sum(l) for l in groups)
        best = None
        for q in range(largest, 2 * largest + 1):
            cost = 0
            for layer in groups:
                live = [n for n in layer if n > 0]
                options = [q // s - len(live) for s in range(1, q + 1)
                           if q % s == 0 and sum(-(-n // s) for n in live) <= q // s]
                cost += (q - sum(live)) + min(options)
            best = cost if best is None else min(best, cost)
        assert added == best, (groups, added, best)


@pytest.mark.parametrize("ffn", [[37, 64, 51, 20], [256, 512, 256, 768]])
def test_megatron_core_reads_the_block_configs_as_written(tmp_path, ffn):
    """megatron-core's own reader of `block_configs` (`HeterogeneousTransformerConfig`, as
    used for Nemotron-NAS checkpoints) gives every layer the KV heads and FFN width of the
    export's tensors, from exact sizes and from ffn_mult."""
    from megatron.core.transformer.heterogeneous.heterogeneous_config import HeterogeneousTransformerConfig
    from safetensors import safe_open

    arch = pruned_arch()
    arch.hidden_size, arch.ffn = 96, ffn
    _, out, config = _export(tmp_path, arch)
    megatron = HeterogeneousTransformerConfig(
        num_layers=config["num_hidden_layers"], hidden_size=config["hidden_size"],
        num_attention_heads=config["num_attention_heads"], kv_channels=config["head_dim"],
        heterogeneous_layers_config_encoded_json=(out / "config.json").read_text())
    with safe_open(str(next(out.glob("*.safetensors"))), "pt") as f:
        for layer in range(arch.num_layers):
            per_layer = megatron.get_config_for_layer(layer + 1)
            kv_rows = f.get_slice(f"model.layers.{layer}.self_attn.k_proj.weight").get_shape()[0]
            width = f.get_slice(f"model.layers.{layer}.mlp.gate_proj.weight").get_shape()[0]
            assert per_layer.num_query_groups * config["head_dim"] == kv_rows, layer
            assert per_layer.ffn_hidden_size == width == ffn[layer], layer
