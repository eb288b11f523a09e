"""A model whose layers differ widely (layer 0 down to 1 query head and 2 FFN channels, the
others untouched) trains, resumes at another layout, exports, and transformers gives
megatron's logits (1e-5) and generates."""

import json

import pytest
import torch

from tests.hf.test_convert import convert
from tests.helpers import run_distributed, tiny_config
from tests.integration.test_train_cli import run, step_losses, write_config

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow


def test_thin_layer_trains_resumes_exports_and_generates(tmp_path, random_dataset):
    from transformers import AutoModelForCausalLM

    from tests.distributed.layer_workers import thin_layer_and_train
    from tests.hf.workers import megatron_logits

    run_dir = tmp_path / "run"
    cfg = tiny_config(random_dataset, train={"iters": 4, "warmup_iters": 1, "eval_iters": 0},
                      checkpoint={"dir": str(run_dir)})
    arch_json, losses = run_distributed(thin_layer_and_train, 1, cfg, 1, 2, 2)[0]
    arch = json.loads(arch_json)
    assert [sum(g) for g in arch["heads_per_group"]] == [1, 4, 4, 4] and arch["ffn"] == [2, 128, 128, 128]
    assert all(loss == loss for loss in losses)
    # Resume the 2-step checkpoint at PP=2 (TP=2 needs a KV head per rank in every layer).
    cfg["parallel"] = {"tp": 1, "pp": 2}
    out = run(2, write_config(tmp_path / "pp2.yaml", cfg), log=tmp_path / "pp2.log")
    assert "resum" in out.lower()
    resumed = step_losses(run_dir / "metrics.jsonl")
    assert sorted(resumed)[-2:] == [3, 4] and all(v == v for v in resumed.values())
    state = json.loads((run_dir / "iter_0000004" / "pap_state.json").read_text())
    assert state["arch"]["ffn"] == [2, 128, 128, 128]

    tokens = torch.randint(1, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = [x for x in run_distributed(megatron_logits, 2, str(run_dir), 1, 2, tokens) if x is not None][0]
    convert("mcore-to-hf", "--ckpt", str(run_dir), "--out", str(tmp_path / "hf"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, expected, rtol=1e-5, atol=1e-5)
        generated = model.generate(tokens[:1], max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 16) and int(generated[0, 12]) == int(expected[0, -1].argmax())
