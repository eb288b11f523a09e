"""configs/recipes/: the paper's three runs load, validate and say what the paper says."""

from pathlib import Path

import pytest

from pap.arch import Arch
from pap.config import load_config, parse_blend
from pap.pruning.select import Removal, remove_from_arch
from pap.trainer import ensure_world_fits

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "configs" / "recipes"
TOKENS_PER_STEP = 2 ** 20  # the paper's "batchsize of 1M tokens"
# recipe -> (source parameters: SmolLM-360M / SmolLM-1.7B, target, pruning-aware tokens, continued tokens)
PAPER = {"pap_134m": (361_821_120, 134e6, 50.3e9, 500e9), "pap_469m": (1_711_376_384, 469e6, 72.1e9, 500e9),
         "pap_1.1b": (1_711_376_384, 1.1e9, 36.7e9, 320e9)}
# A CPU-sized model with the recipe's everything else (what a smoke run of a recipe overrides).
SMALL = ["model.hidden_size=64", "model.num_layers=2", "model.num_attention_heads=4", "model.num_query_groups=2",
         "model.ffn_hidden_size=128", "model.vocab_size=256", "model.params_dtype=fp32",
         "model.transformer_impl=local", "train.global_batch_size=8", "train.micro_batch_size=2",
         "train.iters=10", "train.warmup_iters=1", "train.eval_interval=0", "data.seq_length=32",
         "prune.target_params=0.8", "checkpoint.init_from=null", "data.blend=[data/embedded/stdlib_text_document]"]


def smallest_group(arch: Arch) -> int:
    """Parameters of the smallest minimal group (an FFN channel in every layer, for SmolLM)."""
    sizes = []
    for kind, indices in (("attn", (0,) * arch.num_layers), ("ffn", (0,) * arch.num_layers), ("stem", (0,))):
        sizes.append(arch.num_params() - remove_from_arch(arch, Removal(kind, indices, 0.0, ())).num_params())
    return min(sizes)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_is_the_papers_run(name):
    cfg = load_config(RECIPES / f"{name}.yaml")
    source, target, pruning_tokens, continued_tokens = PAPER[name]
    arch = Arch.from_model_config(cfg.model)
    assert arch.num_params() == source
    assert cfg.prune.enabled and cfg.prune.target_params == target < source
    tokens_per_step = cfg.train.global_batch_size * cfg.data.seq_length
    assert tokens_per_step == TOKENS_PER_STEP
    # train.iters covers both stages, to the step.
    assert round((pruning_tokens + continued_tokens) / tokens_per_step, -2) == cfg.train.iters
    # The schedule can take the paper's pruning-stage tokens: even if every removal were the
    # smallest group (the most removals there can be), k steps per removal reach that count,
    # without overshooting it by more than a quarter.
    most_removals = (source - target) / smallest_group(arch)
    longest_stage = most_removals * cfg.prune.grad_steps / cfg.prune.prune_steps * tokens_per_step
    assert pruning_tokens <= longest_stage <= 1.25 * pruning_tokens
    assert cfg.prune.metric == "mix"  # EfficientLLM-A
    assert cfg.checkpoint.init_from.startswith("ckpt/smollm-") and cfg.checkpoint.dir == f"runs/{name}"
    for gpus in (32, 64):  # 4 or 8 nodes of 8 GPUs (512 sequences do not split over 5-7 nodes)
        ensure_world_fits(cfg, gpus)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_blend_is_the_smollm_mix(name):
    from data_prep.blend import read_blend_file

    prefixes, weights = parse_blend(load_config(RECIPES / f"{name}.yaml").data.blend)
    assert list(zip(weights, prefixes)) == read_blend_file(str(REPO / "configs" / "smollm.blend"))


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_scales_down_by_overrides(name):
    """A recipe runs as a CPU smoke test with overrides only, at TP=1 and TP=2."""
    cfg = load_config(RECIPES / f"{name}.yaml", SMALL)
    assert Arch.from_model_config(cfg.model).num_params() < 100_000
    assert (cfg.prune.grad_steps, cfg.prune.metric) == (load_config(RECIPES / f"{name}.yaml").prune.grad_steps, "mix")
    ensure_world_fits(cfg, 1)
    cfg = load_config(RECIPES / f"{name}.yaml", SMALL + ["parallel.tp=2", "prune.min_kv_heads=2", "prune.min_ffn=2"])
    ensure_world_fits(cfg, 2)


@pytest.mark.parametrize("name", ["pap_469m", "pap_1.1b"])
def test_1_7b_recipes_allow_tp2_as_is(name):
    """The floors already allow `TP=2` from the launch scripts without more overrides."""
    cfg = load_config(RECIPES / f"{name}.yaml", ["parallel.tp=2"])
    for gpus in (32, 64):
        ensure_world_fits(cfg, gpus)


def test_adapt_recipe_is_the_469m_run_with_adaptive_layers():
    """adapt_469m.yaml: pap_469m's run (source, batch, budget) with prune.layers=adaptive, and
    enough increments x grad_steps to last the EfficientLLM-469M pruning stage's tokens."""
    import math

    adapt, pap = load_config(RECIPES / "adapt_469m.yaml"), load_config(RECIPES / "pap_469m.yaml")
    assert (adapt.model, adapt.data, adapt.train) == (pap.model, pap.data, pap.train)
    pr = adapt.prune
    # Adapt-Pruner as published: additive cumulative sparsity, delta = A = 0.02, KV-group unit.
    assert pr.layers == "adaptive" and pr.metric == "first" and pr.adapt_rule == "published"
    assert (pr.increment, pr.adapt_amplitude, pr.adapt_unit) == (0.02, 0.02, "group")
    arch = Arch.from_model_config(adapt.model)
    layers = sum(arch.layer_params(l) for l in range(arch.num_layers))
    fixed = arch.num_params() - layers
    # Each increment removes about delta x the source's layer parameters (on budget within one
    # unit: tests/unit/test_adapt_pruner.py).
    increments = math.ceil((arch.num_params() - pr.target_params) / (pr.increment * layers))
    assert fixed < pr.target_params
    tokens = increments * pr.grad_steps * adapt.train.global_batch_size * adapt.data.seq_length
    assert abs(tokens - PAPER["pap_469m"][2]) <= 0.02 * PAPER["pap_469m"][2]
    ensure_world_fits(adapt, 32)


def test_distilled_469m_recipe_is_the_469m_run_with_a_teacher():
    """pap_469m_distill.yaml takes every setting of pap_469m.yaml (`base:`) and adds `distill:`
    with the source as the teacher."""
    plain = load_config(RECIPES / "pap_469m.yaml").to_dict()
    distilled = load_config(RECIPES / "pap_469m_distill.yaml").to_dict()
    assert distilled["distill"]["enabled"] and distilled["distill"]["teacher"] is None  # = checkpoint.init_from
    assert distilled["distill"]["during"] == "both" and distilled["distill"]["alpha"] == 1.0
    assert distilled["checkpoint"]["dir"] == "runs/pap_469m_distill"
    for section in plain:
        if section not in ("distill", "checkpoint"):
            assert distilled[section] == plain[section], section
    assert {k: v for k, v in distilled["checkpoint"].items() if k != "dir"} == \
        {k: v for k, v in plain["checkpoint"].items() if k != "dir"}
