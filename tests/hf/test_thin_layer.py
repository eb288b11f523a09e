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


def test_thinnest_tensor_parallel_layer_resumes_at_tp2_as_uninterrupted(tmp_path, random_dataset):
    """A layer kept at one query head per KV head (2 heads) and 2 FFN channels is the thinnest
    that two TP ranks can share: trained 2 steps at TP=1, resumed at TP=2 for 2 more, the
    losses are those of an uninterrupted TP=1 run (a 1-head layer resumes at PP=2 above)."""
    from tests.distributed.layer_workers import thin_layer_and_train

    def config(name):
        return tiny_config(random_dataset, train={"iters": 4, "warmup_iters": 1, "eval_iters": 0},
                           checkpoint={"dir": str(tmp_path / name)})

    heads = [0, 1]  # one head of each KV group: groups [1, 1]
    _, straight = run_distributed(thin_layer_and_train, 1, config("straight"), 2, 2, 4, heads)[0]
    arch_json, _ = run_distributed(thin_layer_and_train, 1, config("run"), 2, 2, 2, heads)[0]
    assert json.loads(arch_json)["heads_per_group"][0] == [1, 1]
    cfg = config("run")
    cfg["parallel"] = {"tp": 2, "pp": 1}
    run(2, write_config(tmp_path / "tp2.yaml", cfg), log=tmp_path / "tp2.log")
    resumed = step_losses(tmp_path / "run" / "metrics.jsonl")
    for iteration in (3, 4):
        assert resumed[iteration] == pytest.approx(straight[iteration - 1], abs=1e-4), iteration
