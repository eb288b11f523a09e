"""The OBS update (EfficientLLM-B) against a dense least-squares reference in plain torch."""

import torch

from pap.pruning.obs import obs_update, relative_error, left_factor, solve_columns


def _least_squares(weight, inputs, removed):
    """argmin ‖(W' − W) X‖ with W'[:, P] = 0, by torch.linalg.lstsq on the kept inputs."""
    kept = [c for c in range(weight.shape[1]) if c not in removed]
    target = weight @ inputs  # [out, tokens]
    solution = torch.linalg.lstsq(inputs[kept].T, target.T).solution.T  # [out, |K|]
    out = torch.zeros_like(weight)
    out[:, kept] = solution
    return out


def _problem(out=6, n=12, tokens=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out, n, generator=g, dtype=torch.float64)
    # Correlated inputs, so the update matters.
    mix = torch.randn(n, n, generator=g, dtype=torch.float64)
    inputs = mix @ torch.randn(n, tokens, generator=g, dtype=torch.float64)
    return weight, inputs


def test_update_is_the_least_squares_optimum():
    weight, inputs = _problem()
    for removed in ([3], [2, 5, 7], list(range(4, 8))):
        got = obs_update(weight, inputs @ inputs.T, removed, damp=0.0)
        want = _least_squares(weight, inputs, removed)
        assert got[:, removed].abs().max() == 0
        err = ((got - want).norm() / want.norm()).item()
        assert err <= 1e-5, (removed, err)
        # and it beats just dropping the columns
        dropped = weight.clone()
        dropped[:, removed] = 0
        assert ((got - weight) @ inputs).norm() < ((dropped - weight) @ inputs).norm()


def test_update_in_fp32_weights():
    weight, inputs = _problem(seed=1)
    got = obs_update(weight.float(), (inputs @ inputs.T).float(), [1, 4], damp=0.0)
    want = _least_squares(weight, inputs, [1, 4])
    assert got.dtype == torch.float32
    assert ((got.double() - want).norm() / want.norm()).item() <= 1e-5


def test_zero_input_column_leaves_weights_unchanged():
    weight, inputs = _problem(seed=2)
    inputs[5] = 0  # this input channel is always zero
    got = obs_update(weight, inputs @ inputs.T, [5], damp=0.01)
    kept = [c for c in range(weight.shape[1]) if c != 5]
    assert torch.equal(got[:, kept], weight[:, kept])
    assert got[:, 5].abs().max() == 0


def test_sequential_removals_equal_the_joint_optimum():
    """Removals applied one after another, each with H restricted to the columns left."""
    weight, inputs = _problem(seed=3)
    hessian = inputs @ inputs.T
    first, second = [2, 3], [7]
    once = obs_update(weight, hessian, first, damp=0.0)
    kept = [c for c in range(weight.shape[1]) if c not in first]
    restricted = obs_update(once[:, kept], hessian[kept][:, kept], [kept.index(c) for c in second], damp=0.0)
    both = obs_update(weight, hessian, first + second, damp=0.0)
    assert torch.allclose(restricted, both[:, kept], rtol=0, atol=1e-9 * both.abs().max().item())


def test_reported_errors_are_the_reconstruction_errors():
    weight, inputs = _problem(seed=4)
    hessian = inputs @ inputs.T
    removed = [0, 9]
    solution = solve_columns(hessian, removed, damp=0.0)
    left = left_factor(weight[:, removed], solution.inverse_columns, removed)
    updated = weight + left @ solution.inverse_columns.T
    square = (weight @ inputs).square().sum().item()
    want = ((updated - weight) @ inputs).norm() / (weight @ inputs).norm()
    assert abs(relative_error(left, solution.error_gram, square) - want.item()) <= 1e-9
    plain = (weight[:, removed] @ inputs[removed]).norm() / (weight @ inputs).norm()
    assert abs(relative_error(weight[:, removed], solution.removed_gram, square) - plain.item()) <= 1e-9
