"""`prune.layers: adaptive`: pap's per-layer cosine importance and sparsity targets equal an
independent computation on a Hugging Face LlamaForCausalLM with the same weights and batch."""

import pytest
import torch

from tests.hf.test_convert import MODELS, convert, make_hf_model
from tests.helpers import run_distributed

pytest.importorskip("transformers")
AMPLITUDE, INCREMENT = 0.5, 0.05


def reference_targets(model, tokens):
    """Mean cos(input, output) per decoder layer, by forward hooks on transformers' layers, and
    the sparsities of docs/PRUNING.md written out from the formula."""
    seen = {}

    def hook(index):
        def record(module, args, kwargs, output):
            x = kwargs.get("hidden_states", args[0] if args else None)
            y = output[0] if isinstance(output, tuple) else output
            seen[index] = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1).mean().item()
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(tokens)
    for handle in handles:
        handle.remove()
    cos = [seen[i] for i in range(len(seen))]
    r = [1 - c for c in cos]
    mean = sum(r) / len(r)
    z = [(x - mean) / max(abs(y - mean) for y in r) for x in r]
    cfg = model.config
    h, d = cfg.hidden_size, cfg.head_dim
    per_layer = [(2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d * h + 3 * cfg.intermediate_size * h
                 for _ in cos]
    # pap counts the embedding and output rows padded to a multiple of 128 (300 -> 384).
    total = sum(p.numel() for p in model.parameters()) + 2 * (384 - cfg.vocab_size) * h
    weights = [1 - AMPLITUDE * v for v in z]
    scale = INCREMENT * total / sum(w * p for w, p in zip(weights, per_layer))
    return cos, [scale * w for w in weights]


def test_layer_cosine_and_targets_match_transformers(tmp_path):
    from transformers import LlamaForCausalLM

    from tests.hf.workers import layer_cosines

    hf = make_hf_model(tmp_path / "hf", **MODELS["mha_untied"])
    convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "mcore"))
    tokens = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    cos, targets = run_distributed(layer_cosines, 1,
                                   str(tmp_path / "mcore"), tokens, AMPLITUDE, INCREMENT)[0]
    expected_cos, expected_targets = reference_targets(LlamaForCausalLM.from_pretrained(hf).float(), tokens)
    assert len(set(round(c, 3) for c in expected_cos)) > 1  # the layers differ, so the targets do
    torch.testing.assert_close(torch.tensor(cos), torch.tensor(expected_cos), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(targets), torch.tensor(expected_targets), rtol=1e-5, atol=0)
