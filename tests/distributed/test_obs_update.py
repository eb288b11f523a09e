"""EfficientLLM-B (`prune.update: obs`) on the live trainer: the update is the least-squares
optimum, and the removals, weights and losses do not depend on the parallel layout.

Tolerances are those of test_pruning_invariance.py (its docstring explains the bf16 ones).
"""

import json

import pytest

from tests.distributed.test_pruning_invariance import _config, assert_same_run, assert_same_run_in_bf16
from tests.distributed.workers import obs_rounds_against_least_squares, pruning_run
from tests.helpers import run_distributed

pytestmark = pytest.mark.slow
STEPS = 6


def _obs(prefix, parallel, dtype="fp32", **prune):
    return _config(prefix, parallel, dtype, update="obs", **prune)


def obs_run(cfg_dict: dict, steps: int):
    """`obs_pruning_run`, plus per round the in-sample errors and whether the reported ones
    were measured on held-out tokens."""
    import torch.distributed as dist

    from pap.config import config_from_dict
    from pap.sharding.full_state import gather_full_state
    from pap.trainer import Trainer
    from tests.distributed.workers import _everything_on_rank0

    trainer = Trainer(config_from_dict(cfg_dict))
    hook = trainer.callback("pruning")
    losses, errors, fit_errors, held_out = [], [], [], []
    for _ in range(steps):
        done = len(hook.removals)
        losses.append(trainer.train_step().loss)
        if len(hook.removals) > done and hook.obs is not None:
            errors += [(hook.obs.errors[kind], hook.obs.plain_errors[kind]) for kind in sorted(hook.obs.errors)]
            fit_errors += [(hook.obs.fit_errors[kind], hook.obs.fit_plain_errors[kind])
                           for kind in sorted(hook.obs.errors)]
            held_out.append(hook.obs.held_out)
    params = _everything_on_rank0(gather_full_state(trainer.model.module, "param"))
    if dist.get_rank() != 0:
        return None
    return {"removals": [(r.kind, r.indices) for r in hook.removals], "arch": trainer.arch.to_json(),
            "params": params, "losses": losses, "errors": errors, "fit_errors": fit_errors, "held_out": held_out}


def test_live_rounds_reach_the_least_squares_optimum(random_dataset):
    """Every token of the one-step window sampled into H (none held out), no dampening: after
    each round the updated `linear_fc2` (ffn), `linear_proj` (attn), `linear_qkv`,
    `linear_fc1` and untied `output_layer` (stem) equal lstsq on the inputs the test
    captured itself."""
    cfg = _obs(random_dataset, {"tp": 1, "pp": 1}, hessian_tokens=8 * 32, hessian_damp=0.0, hessian_holdout=0.0)
    results = run_distributed(obs_rounds_against_least_squares, 1, cfg, 3)[0]
    assert {kind for kinds, _, _, _ in results for kind in kinds} == {"attn", "ffn", "stem"}, results
    assert {key[0] for _, key, _, _ in results} == {"proj", "fc2", "qkv", "fc1", "output"}
    for kinds, key, _, err in results:
        assert err <= 1e-5, (kinds, key, err)


def test_one_layer_removals_update_only_that_layer(random_dataset):
    """`prune.layers: greedy` takes one head or channel of one layer per removal: the update
    reaches the least-squares optimum on that layer and leaves the others to the cut alone."""
    cfg = _obs(random_dataset, {"tp": 1, "pp": 1}, hessian_tokens=8 * 32, hessian_damp=0.0, hessian_holdout=0.0,
               layers="greedy", prune_steps=2, min_ffn=126)
    results = run_distributed(obs_rounds_against_least_squares, 1, cfg, 3)[0]
    assert results and all(err <= 1e-5 for _, _, _, err in results), results
    # Three rounds of two one-layer removals: at most six layers updated (uniform: twelve).
    assert len(results) <= 6, results


def test_greedy_layers_with_obs_match_across_tensor_parallel_ranks(random_dataset):
    """Per-layer removals and the OBS update together: TP=2 as TP=1 (weights, losses, errors).

    Every sampled token goes into H: these one-layer updates fit 256 tokens to inputs up to
    128 wide, and holding an eighth of them out leaves H conditioned badly enough that fp32
    rounding differences between TP=1 and TP=2 grow to 2.1e-4 of the largest weight (1.3e-5
    with every token in H), past `assert_same_run`'s 1e-4. The held-out split's layout
    invariance is checked by the layout tests below."""
    cfg = {"layers": "greedy", "hessian_holdout": 0.0}
    reference = run_distributed(obs_run, 1, _obs(random_dataset, {"tp": 1, "pp": 1}, **cfg), STEPS)[0]
    got = run_distributed(obs_run, 2, _obs(random_dataset, {"tp": 2, "pp": 1}, **cfg), STEPS)[0]
    assert any(-1 in r[1] for r in reference["removals"]), "no one-layer removal made"
    assert_same_run(got, reference)


def test_several_removals_in_a_round_compose_to_the_joint_optimum(random_dataset):
    """Three removals per round, two of them from the same layers' FFN inputs: each applied on
    the weights the previous one left, with H restricted to the columns still there, they
    reach the one-shot optimum for all removed columns."""
    cfg = _obs(random_dataset, {"tp": 1, "pp": 1}, hessian_tokens=8 * 32, hessian_damp=0.0, hessian_holdout=0.0,
               prune_steps=3, min_ffn=126)
    results = run_distributed(obs_rounds_against_least_squares, 1, cfg, 2)[0]
    assert any(touching >= 2 for _, _, touching, _ in results), results
    assert any(len(set(kinds)) >= 2 for kinds, _, _, _ in results), results
    for kinds, key, _, err in results:
        assert err <= 1e-5, (kinds, key, err)


@pytest.fixture(scope="module")
def reference(random_dataset):
    return run_distributed(obs_run, 1, _obs(random_dataset, {"tp": 1, "pp": 1}), STEPS)[0]


@pytest.fixture(scope="module")
def bf16_reference(random_dataset):
    return run_distributed(obs_run, 1, _obs(random_dataset, {"tp": 1, "pp": 1}, "bf16"), STEPS)[0]


def test_reference_updates_every_kind_and_helps(reference, random_dataset):
    """All three kinds are removed (uneven KV groups reached); each update lowers the layer's
    reconstruction error below plain removal's on the tokens it was fitted to; the reported
    errors are on held-out tokens, finite, and differ from the in-sample ones; the weights
    differ from variant A's."""
    assert {kind for kind, _ in reference["removals"]} == {"attn", "ffn", "stem"}
    arch = json.loads(reference["arch"])
    assert any(len(set(groups)) > 1 for groups in arch["heads_per_group"]), "no uneven KV groups reached"
    assert len(reference["errors"]) == len(reference["removals"])  # one removal per round here
    for with_update, without in reference["fit_errors"]:
        assert 0 <= with_update < without, reference["fit_errors"]
    # Out of sample the update need not win: a one-step window fits 224 tokens to inputs up
    # to 128 wide here (docs/BENCHMARKS.md measures the error against tokens per width).
    assert reference["held_out"] and all(reference["held_out"])
    assert all(0 <= e < float("inf") and 0 <= p < float("inf") for e, p in reference["errors"])
    assert reference["errors"] != reference["fit_errors"]
    plain = run_distributed(pruning_run, 1, _config(random_dataset, {"tp": 1, "pp": 1}), STEPS)[0]
    assert plain["removals"][0] == reference["removals"][0]
    name = "decoder.layers.0.mlp.linear_fc2.weight"
    assert (plain["params"][name] - reference["params"][name]).abs().max() > 1e-3


LAYOUTS = pytest.mark.parametrize(
    "world,parallel", [(2, {"tp": 2, "pp": 1}), (2, {"tp": 1, "pp": 2}), (4, {"tp": 2, "pp": 2}),
                       (2, {"tp": 1, "pp": 1, "distributed_optimizer": True})],
    ids=["tp2", "pp2", "tp2pp2", "dp2_distopt"])


@LAYOUTS
def test_same_removals_weights_and_losses(world, parallel, reference, random_dataset):
    got = run_distributed(obs_run, world, _obs(random_dataset, parallel), STEPS)[0]
    assert_same_run(got, reference)
    for (a, _), (b, _) in zip(got["errors"], reference["errors"]):
        assert a == pytest.approx(b, rel=1e-3)


@pytest.mark.parametrize("world,parallel", [(2, {"tp": 2, "pp": 1}), (2, {"tp": 1, "pp": 1, "distributed_optimizer": True})],
                         ids=["tp2", "dp2_distopt"])
def test_same_removals_weights_and_losses_in_bf16(world, parallel, bf16_reference, random_dataset):
    got = run_distributed(obs_run, world, _obs(random_dataset, parallel, "bf16"), STEPS)[0]
    assert {kind for kind, _ in bf16_reference["removals"]} == {"attn", "ffn", "stem"}
    # The update solves with H⁻¹ (condition numbers up to ~1e7), which amplifies the bf16
    # activation differences between layouts: the worst seen was 5.8e-2 (layer 0's
    # linear_qkv after a hidden-channel round, TP=2, on an AVX-512 AMD EPYC); the bound is 1.7x that.
    assert_same_run_in_bf16(got, bf16_reference, weights=1e-1)
