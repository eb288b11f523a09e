"""configs/recipes/: the paper's three runs load, validate and say what the paper says."""

from pathlib import Path

import pytest

from pap.arch import Arch
from pap.config import load_config
from pap.trainer import ensure_world_fits

RECIPES = Path(__file__).resolve().parents[2] / "configs" / "recipes"
# recipe -> (source parameters, target, pruning-aware tokens in the paper)
EXPECTED = {"pap_134m": (361_821_120, 134e6, 50.3e9), "pap_469m": (1_711_376_384, 469e6, 72.1e9),
            "pap_1.1b": (1_711_376_384, 1.1e9, 36.7e9)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe(name):
    cfg = load_config(RECIPES / f"{name}.yaml")
    source_params, target, pruning_tokens = EXPECTED[name]
    assert Arch.from_model_config(cfg.model).num_params() == source_params  # SmolLM-360M / -1.7B
    assert cfg.prune.enabled and cfg.prune.target_params == target < source_params
    tokens_per_step = cfg.train.global_batch_size * cfg.data.seq_length
    assert tokens_per_step == 2 ** 20  # the paper's ~1M-token batch
    assert cfg.train.iters * tokens_per_step > pruning_tokens  # room for the pruning stage and more
    assert cfg.checkpoint.init_from and cfg.checkpoint.dir.startswith("runs/")
    for gpus in (32, 64):  # 4 or 8 nodes of 8 GPUs
        ensure_world_fits(cfg, gpus)


def test_recipe_scales_down_by_overrides():
    """A recipe runs as a CPU smoke test with overrides only (what the launch tests do)."""
    cfg = load_config(RECIPES / "pap_469m.yaml", [
        "model.hidden_size=64", "model.num_layers=2", "model.num_attention_heads=4", "model.num_query_groups=2",
        "model.ffn_hidden_size=128", "model.params_dtype=fp32", "train.global_batch_size=8",
        "train.micro_batch_size=2", "train.iters=10", "train.warmup_iters=1", "data.seq_length=32",
        "prune.target_params=0.8"])
    ensure_world_fits(cfg, 2)
    assert cfg.prune.grad_steps == 9 and cfg.parallel.tp == 2
