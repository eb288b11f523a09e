"""Shapes a plain LlamaForCausalLM cannot hold export with pap's remote code, exactly."""

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.hf.test_convert import TOKENS, convert, hf_logits
from tests.helpers import run_distributed, tiny_config
from tests.integration.test_train_cli import run, write_config

pytest.importorskip("transformers")


def pruned_arch():
    """Cluster attention (uneven query heads per KV head, a pruned KV head), per-layer
    head counts and FFN widths, and an odd hidden size."""
    from pap.arch import Arch

    return Arch(vocab_size=300, padded_vocab_size=384, hidden_size=45, head_dim=8,
                heads_per_group=[[3, 1], [2, 0, 1], [1, 1, 1, 2], [0, 4]], ffn=[37, 64, 51, 20],
                tie_embeddings=False)


def random_full_state(arch, seed=0):
    """Megatron full tensors (global names) for `arch`, random but not degenerate."""
    g = torch.Generator().manual_seed(seed)
    h, d = arch.hidden_size, arch.head_dim

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    full = {"embedding.word_embeddings.weight": rand(arch.padded_vocab_size, h, scale=1.0),
            "decoder.final_layernorm.weight": 1 + rand(h), "output_layer.weight": rand(arch.padded_vocab_size, h)}
    for l in range(arch.num_layers):
        q, kv, f = arch.num_heads(l), arch.num_kv_heads(l), arch.ffn[l]
        prefix = f"decoder.layers.{l}."
        full.update({
            prefix + "input_layernorm.weight": 1 + rand(h),
            prefix + "self_attention.linear_qkv.weight": rand((q + 2 * kv) * d, h),
            prefix + "self_attention.linear_proj.weight": rand(h, q * d),
            prefix + "pre_mlp_layernorm.weight": 1 + rand(h),
            prefix + "mlp.linear_fc1.weight": rand(2 * f, h),
            prefix + "mlp.linear_fc2.weight": rand(h, f),
        })
    return full


def reference_logits(full, arch, tokens, rope_theta=10000.0, eps=1e-5):
    """A direct implementation of the pruned model from megatron-layout tensors."""
    from pap.hf import layout

    d = arch.head_dim
    x = full["embedding.word_embeddings.weight"][tokens]
    seq = tokens.shape[1]
    inv = 1.0 / rope_theta ** (torch.arange(0, d, 2).float() / d)
    angles = torch.outer(torch.arange(seq).float(), inv)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rope(t):
        half = t.shape[-1] // 2
        rotated = torch.cat([-t[..., half:], t[..., :half]], -1)
        return t * cos + rotated * sin

    def norm(t, w):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * w

    mask = torch.ones(seq, seq).triu(1).bool()
    for l in range(arch.num_layers):
        p = f"decoder.layers.{l}."
        y = norm(x, full[p + "input_layernorm.weight"])
        wq, wk, wv = layout.qkv_from_megatron(full[p + "self_attention.linear_qkv.weight"],
                                              arch.heads_per_group[l], d)
        groups = layout.kept_groups(arch.heads_per_group[l])
        kv_of_head = [g for g, n in enumerate(groups) for _ in range(n)]
        q = rope((y @ wq.T).unflatten(-1, (-1, d)).transpose(1, 2))
        k = rope((y @ wk.T).unflatten(-1, (-1, d)).transpose(1, 2))[:, kv_of_head]
        v = (y @ wv.T).unflatten(-1, (-1, d)).transpose(1, 2)[:, kv_of_head]
        scores = (q @ k.transpose(-1, -2)) / d ** 0.5
        attn = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        x = x + attn.transpose(1, 2).flatten(2) @ full[p + "self_attention.linear_proj.weight"].T
        y = norm(x, full[p + "pre_mlp_layernorm.weight"])
        gate, up = full[p + "mlp.linear_fc1.weight"].chunk(2)
        x = x + (torch.nn.functional.silu(y @ gate.T) * (y @ up.T)) @ full[p + "mlp.linear_fc2.weight"].T
    x = norm(x, full["decoder.final_layernorm.weight"])
    return (x @ full["output_layer.weight"].T)[..., : arch.vocab_size]


def test_pruned_arch_remote_code_and_expand_kv(tmp_path):
    from pap.config import ModelConfig
    from pap.hf.convert import write_hf_dir

    arch = pruned_arch()
    full = random_full_state(arch)
    reference = reference_logits(full, arch, TOKENS)
    settings = ModelConfig(vocab_size=300, rope_theta=10000.0, norm_eps=1e-5)

    remote = write_hf_dir(full, arch, settings, str(tmp_path / "remote"), torch.float32)
    config = json.loads((remote / "config.json").read_text())
    assert config["architectures"] == ["PapLlamaForCausalLM"] and config["heads_per_group"] == arch.heads_per_group
    torch.testing.assert_close(hf_logits(remote, TOKENS, remote=True), reference, rtol=1e-5, atol=1e-5)

    expanded = write_hf_dir(full, arch, settings, str(tmp_path / "expanded"), torch.float32, expand_kv=True)
    config = json.loads((expanded / "config.json").read_text())
    assert config["num_key_value_heads"] == config["num_attention_heads"] == 5
    assert config["intermediate_size"] == 64 and config["num_hidden_layers"] == 4
    # 45 % 5 == 0, so the expanded model is a plain Llama, loadable without remote code.
    assert config["architectures"] == ["LlamaForCausalLM"] and not (expanded / "modeling_pap_llama.py").exists()
    torch.testing.assert_close(hf_logits(expanded, TOKENS), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_pruned_megatron_model_exports_exactly(tmp_path):
    """A megatron-core model of a pruned arch (cluster attention, per-layer shapes): its
    logits at TP1, PP2, TP2 and TP2xPP2 agree and equal the remote-code export's and the
    --expand-kv Llama's."""
    from tests.hf.workers import make_checkpoint, megatron_logits

    arch = pruned_arch()
    arch.heads_per_group[3] = [1, 3]  # every layer keeps >= 2 KV heads, so TP=2 can hold it
    run_distributed(make_checkpoint, 1, arch.to_json(), str(tmp_path / "mcore"))
    expected = None
    for tp, pp in ((1, 1), (1, 2), (2, 1), (2, 2)):
        # TP=2 places unequal KV groups and odd FFN widths unevenly over the two ranks.
        got = [x for x in run_distributed(megatron_logits, tp * pp, str(tmp_path / "mcore"), tp, pp, TOKENS)
               if x is not None]
        if expected is None:
            expected = got[0]
        torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-5, msg=f"tp={tp} pp={pp}")
    convert("mcore-to-hf", "--ckpt", str(tmp_path / "mcore"), "--out", str(tmp_path / "remote"))
    torch.testing.assert_close(hf_logits(tmp_path / "remote", TOKENS, remote=True), expected, rtol=1e-5, atol=1e-5)
    convert("mcore-to-hf", "--ckpt", str(tmp_path / "mcore"), "--out", str(tmp_path / "plain"), "--expand-kv")
    torch.testing.assert_close(hf_logits(tmp_path / "plain", TOKENS), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_hidden_not_multiple_of_heads_matches_megatron(tmp_path, random_dataset):
    """A trained pap model with hidden 36 and 5 heads of 8: transformers' Llama rejects
    that config, so the export uses the remote-code class; its logits equal megatron's."""
    from tests.hf.workers import megatron_logits

    cfg = tiny_config(random_dataset, model={"vocab_size": 300, "hidden_size": 36, "num_attention_heads": 5,
                                             "num_query_groups": 5, "head_dim": 8, "ffn_hidden_size": 40},
                      train={"iters": 2, "warmup_iters": 1, "eval_iters": 0},
                      checkpoint={"dir": str(tmp_path / "run")})
    run(1, write_config(tmp_path / "c.yaml", cfg), log=tmp_path / "train.log")
    convert("mcore-to-hf", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "hf"))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["PapLlamaForCausalLM"]
    tokens = TOKENS % 256
    expected = [x for x in run_distributed(megatron_logits, 1, str(tmp_path / "run"), 1, 1, tokens) if x is not None][0]
    torch.testing.assert_close(hf_logits(tmp_path / "hf", tokens, remote=True), expected, rtol=1e-5, atol=1e-5)


def hf_first_batch_loss(hf_dir, cfg_dict, padded_vocab):
    from transformers import AutoModelForCausalLM

    from pap.config import config_from_dict
    from pap.data import Batches, build_datasets

    cfg = config_from_dict(cfg_dict)
    train, _ = build_datasets(cfg, cfg.train.iters * cfg.train.global_batch_size, 0, None)
    batches = Batches(train, cfg.train.micro_batch_size, cfg.train.global_batch_size, 0, 1)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    losses = []
    with torch.no_grad():
        for micro in batches.microbatches(0):
            logits = model(micro["tokens"]).logits
            logits = torch.nn.functional.pad(logits, (0, padded_vocab - logits.shape[-1]))
            losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), micro["labels"].flatten()).item())
    return sum(losses) / len(losses)


@pytest.mark.slow
def test_training_starts_from_converted_weights(tmp_path, random_dataset):
    """checkpoint.init_from: a run starts from HF weights and the architecture they carry."""
    from tests.hf.test_convert import MODELS, make_hf_model

    hf = make_hf_model(tmp_path / "hf", **MODELS["gqa_tied"])
    convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "mcore"))
    model = {"vocab_size": 300, "hidden_size": 96, "num_layers": 4, "num_attention_heads": 6, "num_query_groups": 2,
             "ffn_hidden_size": 80, "tie_embeddings": True}
    cfg = tiny_config(random_dataset, model=model, train={"iters": 2, "warmup_iters": 1, "eval_iters": 1},
                      checkpoint={"dir": str(tmp_path / "run"), "init_from": str(tmp_path / "mcore")})
    out = run(1, write_config(tmp_path / "c.yaml", cfg), log=tmp_path / "train.log")
    assert f"weights from {tmp_path / 'mcore' / 'iter_0000000'}" in out
    # The first loss is the HF model's loss on the first batch (megatron's zero logits for
    # the padded vocab rows included in the softmax).
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["lm loss"]
    assert first == pytest.approx(hf_first_batch_loss(hf, cfg, padded_vocab=384), abs=1e-4)
    cfg["checkpoint"]["dir"] = str(tmp_path / "run2")
    cfg["model"]["norm_eps"] = 1e-6
    bad = tmp_path / "bad.yaml"
    write_config(bad, cfg)
    import subprocess

    result = subprocess.run([sys.executable, "-m", "pap.train", "--config", str(bad)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 2 and "model.norm_eps is 1e-05 there" in result.stderr


@pytest.mark.slow
def test_bf16_distributed_optimizer_run_starts_from_converted_weights(tmp_path, random_dataset):
    """A bf16 HF model, converted, trained at DP=2 in bf16 with the distributed optimizer: the
    first loss is the HF model's (bf16 tolerance: megatron runs the GEMMs in bf16, the
    reference in fp32 on the same bf16 weights) and after one step at lr 1e-4 the exported
    fp32 masters are within lr of the source (today's main: 4.6e-2 away, at the random init)."""
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from tests.hf.test_convert import MODELS, make_hf_model

    hf = make_hf_model(tmp_path / "hf32", **MODELS["gqa_tied"])
    LlamaForCausalLM.from_pretrained(hf).to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    convert("hf-to-mcore", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "mcore"))
    model = {"vocab_size": 300, "hidden_size": 96, "num_layers": 4, "num_attention_heads": 6, "num_query_groups": 2,
             "ffn_hidden_size": 80, "tie_embeddings": True, "params_dtype": "bf16"}
    cfg = tiny_config(random_dataset, model=model, parallel={"tp": 1, "pp": 1, "distributed_optimizer": True},
                      train={"iters": 1, "warmup_iters": 0, "lr": 1e-4, "min_lr": 1e-4, "eval_iters": 0},
                      checkpoint={"dir": str(tmp_path / "run"), "init_from": str(tmp_path / "mcore")})
    run(2, write_config(tmp_path / "c.yaml", cfg), log=tmp_path / "train.log")
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["lm loss"]
    assert first == pytest.approx(hf_first_batch_loss(tmp_path / "hf", cfg, padded_vocab=384), abs=2e-2)
    convert("mcore-to-hf", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "after"), "--dtype", "float32")
    source, after = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "after" / "model.safetensors")
    assert source.keys() == after.keys()
    for name, value in source.items():
        moved = (after[name] - value.float()).abs().max().item()
        assert 0 < moved <= 1.2e-4, f"{name}: {moved:.2e} from the source after one step"


def test_generate_on_a_pruned_export_follows_the_reference_model(tmp_path):
    """`pap.generate` (transformers alone, remote code) continues a prompt exactly as greedy
    decoding with the test's direct implementation of the pruned model does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from pap.config import ModelConfig
    from pap.generate import generate
    from pap.hf.convert import write_hf_dir

    arch = pruned_arch()
    full = random_full_state(arch, seed=5)
    out = write_hf_dir(full, arch, ModelConfig(vocab_size=300), str(tmp_path / "hf"), torch.float32)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n"] * 50
    tokenizer.train_from_iterator(text, trainers.BpeTrainer(vocab_size=290, show_progress=False,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.save(str(out / "tokenizer.json"))
    prompt = "def add(a"
    ids = torch.tensor([tokenizer.encode(prompt).ids])
    for _ in range(6):
        ids = torch.cat([ids, reference_logits(full, arch, ids)[:, -1, :300].argmax(-1, keepdim=True)], dim=1)
    expected = tokenizer.decode(ids[0, len(tokenizer.encode(prompt).ids):].tolist())
    assert expected and generate(str(out), prompt, max_new_tokens=6, report=lambda _: None) == expected
