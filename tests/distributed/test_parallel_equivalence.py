"""TP=2, PP=2, TP2xPP2 and DP=2 against a one-process reference (gloo, CPU), in fp32 and in
bf16 with fp32 master weights.

Weights come from pap.init, which is layout-independent, so the reference and the
parallel run start from the same model; the test checks that too.

Tolerances. fp32: reduction order only (~1e-7 relative per GEMM). bf16: every GEMM's
output is rounded to 8 significant bits (unit round-off 2^-9 ~ 2e-3), and another layout
sums partial products in another order before that rounding, so activations differ by
an ulp here and there: the worst seen were 4.6e-5 on the first loss (a mean over 256
tokens of fp32 log-softmax), 1.3e-2 of the largest entry on gradients (fp32 accumulations
of bf16 products), 1.8e-3 on the five training losses. The bounds are 3-4x those.
"""

import pytest
import torch

from tests.distributed.workers import grads_and_losses
from tests.helpers import run_distributed, tiny_config

pytestmark = pytest.mark.slow

STEPS = 5
LAYOUTS = {
    # name: (world size, parallel section, tied embeddings)
    "tp2": (2, {"tp": 2, "pp": 1}, False),
    "pp2_tied": (2, {"tp": 1, "pp": 2}, True),
    "tp2pp2": (4, {"tp": 2, "pp": 2}, False),
    "dp2_tied": (2, {"tp": 1, "pp": 1}, True),
    "dp2_distributed_optimizer": (2, {"tp": 1, "pp": 1, "distributed_optimizer": True}, False),
}


# dtype: (first loss, gradients (relative to the largest entry), training losses)
TOLERANCES = {"fp32": (1e-5, 1e-5, 1e-4), "bf16": (2e-4, 4e-2, 6e-3)}


def _config(prefix, parallel, tied, dtype="fp32"):
    return tiny_config(prefix, parallel=parallel, model={"tie_embeddings": tied, "params_dtype": dtype})


@pytest.fixture(scope="module")
def references(random_dataset):
    return {(tied, dtype): run_distributed(grads_and_losses, 1,
                                           _config(random_dataset, {"tp": 1, "pp": 1}, tied, dtype), STEPS)[0]
            for tied in (False, True) for dtype in TOLERANCES}


def _relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("dtype", sorted(TOLERANCES))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_matches_single_process(layout, dtype, references, random_dataset):
    world, parallel, tied = LAYOUTS[layout]
    ref = references[tied, dtype]
    loss_tol, grad_tol, losses_tol = TOLERANCES[dtype]
    got = run_distributed(grads_and_losses, world, _config(random_dataset, parallel, tied, dtype), STEPS)[0]

    assert got["params"].keys() == ref["params"].keys()
    for name, value in ref["params"].items():
        assert got["params"][name].shape == value.shape, name
        assert got["params"][name].dtype == value.dtype, name
        assert torch.equal(got["params"][name], value), f"initial weight {name} differs"
    print(f"{layout} {dtype}: first loss {abs(got['loss'] - ref['loss']):.2e}, losses "
          f"{max(abs(a - b) for a, b in zip(got['losses'], ref['losses'])):.2e}")
    assert abs(got["loss"] - ref["loss"]) <= loss_tol
    if not parallel.get("distributed_optimizer"):
        # (The distributed optimizer reduce-scatters: each rank holds only its shard of the
        # reduced gradient, so there the check is the training trajectory below.)
        _assert_same_gradients(got, ref, grad_tol)
    for step, (a, b) in enumerate(zip(got["losses"], ref["losses"])):
        assert abs(a - b) <= losses_tol, f"step {step + 1}: loss {a} vs {b}"
    assert ref["losses"][-1] < ref["losses"][0], "training did not reduce the loss"


def _assert_same_gradients(got, ref, tolerance):
    worst = max((_relative_error(got["grads"][n].float(), g.float()), n) for n, g in ref["grads"].items())
    print(f"  worst gradient error {worst[0]:.2e} ({worst[1]})")
    assert worst[0] <= tolerance, f"gradient {worst[1]} differs by {worst[0]:.2e} (relative)"
    assert all(g.abs().max() > 0 for g in ref["grads"].values()), "reference has an all-zero gradient"


def test_arch_counts_the_built_model(random_dataset):
    """Arch.num_params() equals the parameters megatron builds, for tied and untied, across PP."""
    from tests.distributed.workers import model_shapes

    for tied, world, parallel in ((False, 1, {}), (True, 2, {"pp": 2})):
        built, counted = run_distributed(model_shapes, world, _config(random_dataset, {"tp": 1, "pp": 1, **parallel},
                                                                      tied))[0]
        assert built == counted
