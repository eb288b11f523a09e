"""Hugging Face <-> pap conversion: exact tensors and logits parity with transformers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import run_distributed

transformers = pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[2]

# name: (LlamaConfig kwargs)
MODELS = {
    "mha_untied": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "gqa_tied": dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True),
    # head_dim 16 != hidden / heads = 8
    "gqa_head_dim_untied": dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                                tie_word_embeddings=False),
}


def make_hf_model(out: Path, seed: int = 0, **kwargs) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=300, intermediate_size=80, num_hidden_layers=4, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **kwargs)
    model = LlamaForCausalLM(config).float()
    with torch.no_grad():  # norms away from one, so a swapped norm would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(out)
    return out


def convert(*args: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "pap.convert", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    if expect_ok:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def hf_logits(directory: Path, tokens: torch.Tensor, remote: bool = False) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=remote, dtype=torch.float32)
    with torch.no_grad():
        return model(tokens).logits


def state(directory: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


TOKENS = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_and_logits(name, tmp_path):
    hf = make_hf_model(tmp_path / "hf", **MODELS[name])
    convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "mcore"), "--tp", "2", "--pp", "2")
    reference = hf_logits(hf, TOKENS)
    original = state(hf)
    for tp, pp in ((1, 1), (2, 1), (1, 2)):
        resaved = tmp_path / f"resaved_tp{tp}_pp{pp}"
        logits = [x for x in run_distributed(megatron_logits_fn(), tp * pp, str(tmp_path / "mcore"), tp, pp,
                                             TOKENS, str(resaved)) if x is not None][0]
        torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
        # The checkpoint re-saved from this layout exports to the original tensors, bit for bit.
        out = tmp_path / f"hf_from_tp{tp}_pp{pp}"
        convert("mcore-to-hf", "--ckpt", str(resaved), "--out", str(out), "--tokenizer", str(hf / "config.json"))
        exported = state(out)
        assert exported.keys() == original.keys()
        for key, value in original.items():
            assert torch.equal(exported[key], value), key
        assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    torch.testing.assert_close(hf_logits(out, TOKENS), reference, rtol=0, atol=0)


def megatron_logits_fn():
    from tests.hf.workers import megatron_logits

    return megatron_logits


@pytest.mark.slow
def test_expand_kv_is_a_plain_llama_with_the_same_logits(tmp_path):
    hf = make_hf_model(tmp_path / "hf", **MODELS["gqa_tied"])
    convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "mcore"))
    convert("mcore-to-hf", "--ckpt", str(tmp_path / "mcore"), "--out", str(tmp_path / "expanded"), "--expand-kv")
    config = json.loads((tmp_path / "expanded" / "config.json").read_text())
    assert config["num_key_value_heads"] == config["num_attention_heads"] == 6
    torch.testing.assert_close(hf_logits(tmp_path / "expanded", TOKENS), hf_logits(hf, TOKENS),
                               rtol=1e-5, atol=1e-5)


def test_bf16_round_trip_keeps_dtype(tmp_path):
    from transformers import LlamaForCausalLM

    hf = make_hf_model(tmp_path / "hf", **MODELS["mha_untied"])
    LlamaForCausalLM.from_pretrained(hf).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    convert("hf-to-mcore", "--hf", str(tmp_path / "bf16"), "--out", str(tmp_path / "mcore"))
    convert("mcore-to-hf", "--ckpt", str(tmp_path / "mcore"), "--out", str(tmp_path / "back"))
    original, exported = state(tmp_path / "bf16"), state(tmp_path / "back")
    assert all(t.dtype == torch.bfloat16 for t in exported.values())
    assert all(torch.equal(exported[k], v) for k, v in original.items())


# ---- bad input -----------------------------------------------------------------------------

def _one_error_line(result, message):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [l for l in (result.stdout + result.stderr).splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_non_llama_config_is_refused(tmp_path):
    hf = make_hf_model(tmp_path / "hf", **MODELS["mha_untied"])
    config = json.loads((hf / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"])
    (hf / "config.json").write_text(json.dumps(config))
    _one_error_line(convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "out"), expect_ok=False),
                    "is not a Llama model")
    assert not (tmp_path / "out").exists()


def test_missing_shard_and_missing_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = make_hf_model(tmp_path / "hf", **MODELS["mha_untied"])
    tensors = load_file(hf / "model.safetensors")
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:10]}, hf / "model-00001-of-00002.safetensors")
    (hf / "model.safetensors").unlink()
    index = {"weight_map": {k: ("model-00001-of-00002.safetensors" if i < 10 else "model-00002-of-00002.safetensors")
                            for i, k in enumerate(names)}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    _one_error_line(convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "out"), expect_ok=False),
                    "shard model-00002-of-00002.safetensors named in model.safetensors.index.json is missing")
    # Now the second shard exists but lacks one tensor.
    save_file({k: tensors[k] for k in names[10:-1]}, hf / "model-00002-of-00002.safetensors")
    index["weight_map"].pop(names[-1])
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    _one_error_line(convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "out"), expect_ok=False),
                    f"tensor {names[-1]} is missing")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_tp_that_does_not_divide(tmp_path):
    hf = make_hf_model(tmp_path / "hf", **MODELS["gqa_tied"])
    _one_error_line(convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "out"), "--tp", "4",
                            expect_ok=False), "--tp (4) does not divide")
    assert not (tmp_path / "out").exists()


def test_checkpoint_missing_a_tensor(tmp_path):
    hf = make_hf_model(tmp_path / "hf", **MODELS["mha_untied"])
    convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "mcore"))
    state_file = next((tmp_path / "mcore").glob("iter_*/pap_state.json"))
    saved = json.loads(state_file.read_text())
    saved["arch"]["heads_per_group"] = [[1, 1, 1, 1, 1]] * 4  # claims a head the weights do not have
    state_file.write_text(json.dumps(saved))
    # The edited state file fails its checksum first; past that (--no-verify), the weights do not load.
    _one_error_line(convert("mcore-to-hf", "--ckpt", str(tmp_path / "mcore"), "--out", str(tmp_path / "back"),
                            expect_ok=False), "damaged")
    unverified = convert("mcore-to-hf", "--ckpt", str(tmp_path / "mcore"), "--out", str(tmp_path / "back"),
                         "--no-verify", expect_ok=False)
    lines = [l for l in (unverified.stdout + unverified.stderr).splitlines() if l.strip()]
    assert unverified.returncode == 2 and len(lines) == 2, lines
    assert lines[0].startswith("pap: ") and "damaged" in lines[0], lines  # read anyway, and said so
    assert lines[1].startswith("error: ") and "cannot load the weights" in lines[1], lines
    assert not (tmp_path / "back").exists() and not (tmp_path / "back.partial").exists()
