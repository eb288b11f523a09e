"""Pruning decisions and resulting weights do not depend on the parallel layout (docs/METHOD.md §7.1),
in fp32 and in bf16 with fp32 master weights.

bf16 tolerances: the removals and the final Arch must be identical; losses within 1e-2 and
weights within 5e-2 normwise relative (‖ΔW‖/‖W‖). Another layout rounds each bf16 GEMM
output after summing in another order (unit round-off 2^-9), so gradients differ by ~1e-2
relative; Adam divides each gradient entry by its own running RMS, so an entry whose
gradient is within rounding of zero may step ±lr (1e-2 here) either way, which makes
elementwise maxima meaningless after a few steps while the normwise difference stays a
few percent (fp32 keeps 1e-4 elementwise).
"""

import json

import pytest

from tests.distributed.workers import pruning_run
from tests.helpers import run_distributed, tiny_config

pytestmark = pytest.mark.slow
STEPS = 6


def _config(prefix, parallel, dtype="fp32", **prune):
    return tiny_config(prefix, parallel=parallel, model={"make_vocab_size_divisible_by": 128, "params_dtype": dtype},
                       train={"iters": 10, "warmup_iters": 1},
                       prune={"enabled": True, "target_params": 0.5, "grad_steps": 1, "prune_steps": 1,
                              "metric": "mix", "min_ffn": 127, "min_hidden": 63, "min_heads": 3, "min_kv_heads": 2, **prune})


def assert_same_run(got: dict, reference: dict) -> None:
    """fp32: the same removals and Arch, every weight within 1e-4 of the reference's largest
    entry, every loss within 1e-4."""
    assert got["removals"] == reference["removals"]
    assert got["arch"] == reference["arch"]
    for name, value in reference["params"].items():
        assert got["params"][name].shape == value.shape, name
        err = ((got["params"][name] - value).abs().max() / value.abs().max()).item()
        assert err <= 1e-4, f"{name}: {err:.2e}"
    for a, b in zip(got["losses"], reference["losses"]):
        assert abs(a - b) <= 1e-4


def assert_same_run_in_bf16(got: dict, reference: dict, weights: float = 5e-2) -> None:
    """bf16 with fp32 masters: the same removals and Arch, weights (same dtype) within
    `weights` normwise (5e-2), losses within 1e-2 (the module docstring says why)."""
    assert got["removals"] == reference["removals"]
    assert got["arch"] == reference["arch"]
    for name, value in reference["params"].items():
        assert got["params"][name].shape == value.shape and got["params"][name].dtype == value.dtype, name
        err = ((got["params"][name].float() - value.float()).norm() / value.float().norm()).item()
        assert err <= weights, f"{name}: {err:.2e}"
    for a, b in zip(got["losses"], reference["losses"]):
        assert abs(a - b) <= 1e-2


@pytest.fixture(scope="module")
def reference(random_dataset):
    return run_distributed(pruning_run, 1, _config(random_dataset, {"tp": 1, "pp": 1}), STEPS)[0]


@pytest.fixture(scope="module")
def bf16_reference(random_dataset):
    return run_distributed(pruning_run, 1, _config(random_dataset, {"tp": 1, "pp": 1}, "bf16"), STEPS)[0]


def test_reference_prunes_every_kind(reference):
    """The floors steer the run through all three group kinds, cluster attention included."""
    kinds = [kind for kind, _ in reference["removals"]]
    assert set(kinds) == {"attn", "ffn", "stem"}, kinds
    arch = json.loads(reference["arch"])
    assert arch["hidden_size"] == 63 and arch["ffn"] == [127] * 4
    assert any(len(set(groups)) > 1 for groups in arch["heads_per_group"]), "no uneven KV groups reached"


LAYOUTS = pytest.mark.parametrize(
    "world,parallel", [(2, {"tp": 2, "pp": 1}), (2, {"tp": 1, "pp": 2}), (4, {"tp": 2, "pp": 2}),
                       (2, {"tp": 1, "pp": 1}), (2, {"tp": 1, "pp": 1, "distributed_optimizer": True}),
                       (4, {"tp": 2, "pp": 1, "distributed_optimizer": True})],
    ids=["tp2", "pp2", "tp2pp2", "dp2", "dp2_distopt", "tp2dp2_distopt"])


@LAYOUTS
def test_same_removals_arch_and_weights(world, parallel, reference, random_dataset):
    got = run_distributed(pruning_run, world, _config(random_dataset, parallel), STEPS)[0]
    assert_same_run(got, reference)


@LAYOUTS
def test_same_removals_arch_and_weights_in_bf16(world, parallel, bf16_reference, random_dataset):
    got = run_distributed(pruning_run, world, _config(random_dataset, parallel, "bf16"), STEPS)[0]
    assert {kind for kind, _ in bf16_reference["removals"]} == {"attn", "ffn", "stem"}
    assert_same_run_in_bf16(got, bf16_reference)


def test_tied_embeddings_across_pipeline_stages(random_dataset):
    """Stem removals cut the tied embedding on the first stage and its copy on the last alike."""
    def tied(parallel):
        cfg = _config(random_dataset, parallel)
        cfg["model"]["tie_embeddings"] = True
        return cfg

    reference = run_distributed(pruning_run, 1, tied({"tp": 1, "pp": 1}), STEPS)[0]
    got = run_distributed(pruning_run, 2, tied({"tp": 1, "pp": 2}), STEPS)[0]
    assert "stem" in [kind for kind, _ in reference["removals"]]
    assert got["removals"] == reference["removals"] and got["arch"] == reference["arch"]
    assert "output_layer.weight" not in got["params"]
    for name, value in reference["params"].items():
        err = ((got["params"][name] - value).abs().max() / value.abs().max()).item()
        assert err <= 1e-4, f"{name}: {err:.2e}"
