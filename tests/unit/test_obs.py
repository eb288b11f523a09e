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


def _damped_least_squares(weight, inputs, removed, damp):
    """argmin ‖(W' − W) X‖² + μ‖W' − W‖² with W'[:, P] = 0, μ = damp·mean(diag X Xᵀ), by
    torch.linalg.lstsq: the ridge term is √μ·I appended to X as n extra input columns."""
    mu = damp * (inputs @ inputs.T).diagonal().mean()
    augmented = torch.cat([inputs, mu.sqrt() * torch.eye(inputs.shape[0], dtype=inputs.dtype)], dim=1)
    return _least_squares(weight, augmented, removed)


def test_damped_update_is_the_damped_least_squares_optimum():
    """damp > 0 against an outside reference, including fewer tokens than inputs (X Xᵀ
    singular: the damping is what makes the update defined)."""
    for tokens, damp in ((80, 0.01), (80, 0.5), (8, 0.1)):
        weight, inputs = _problem(tokens=tokens, seed=5)
        for removed in ([3], [2, 5, 7], list(range(4, 8))):
            got = obs_update(weight, inputs @ inputs.T, removed, damp=damp)
            want = _damped_least_squares(weight, inputs, removed, damp)
            err = ((got - want).norm() / want.norm()).item()
            assert err <= 1e-9, (tokens, damp, removed, err)
            # Damping changes the answer: it is not the undamped optimum (where one exists).
            if tokens > weight.shape[1]:
                assert ((got - _least_squares(weight, inputs, removed)).norm() / want.norm()).item() > 1e-6


def test_held_out_error_is_measured_on_tokens_outside_the_hessian():
    """The round's reported error: U fitted on some tokens, ‖ΔW X_h‖/‖W X_h‖ on others, from
    the held-out rows alone; with fewer fitted tokens than inputs (plus damping) it is well
    above the in-sample error, which is what made the in-sample figure optimistic."""
    from pap.pruning.obs import held_out_grams

    weight, inputs = _problem(n=12, tokens=200, seed=6)
    fit, held = inputs[:, :14], inputs[:, 14:]  # barely more fitted tokens than inputs
    removed = [1, 6, 7]
    solution = solve_columns(fit @ fit.T, removed, damp=0.01)
    left = left_factor(weight[:, removed], solution.inverse_columns, removed)
    delta = left @ solution.inverse_columns.T
    error_gram, removed_gram = held_out_grams(held.T, solution.inverse_columns, removed)
    square = (weight @ held).square().sum().item()
    want = ((delta @ held).norm() / (weight @ held).norm()).item()
    assert abs(relative_error(left, error_gram, square) - want) <= 1e-9
    plain = ((weight[:, removed] @ held[removed]).norm() / (weight @ held).norm()).item()
    assert abs(relative_error(weight[:, removed], removed_gram, square) - plain) <= 1e-9
    in_sample = relative_error(left, solution.error_gram, (weight @ fit).square().sum().item())
    assert want > in_sample
