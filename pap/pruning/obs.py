"""The second-order (OBS) weight update of EfficientLLM-B, on one dense layer.

For a linear layer Y = W X (W: [out, n], X: the layer input over sampled tokens) whose
input columns P are removed, the surviving weights move to the least-squares optimum

    W' = argmin ‖(W' − W) X‖   subject to W'[:, P] = 0,

which in closed form is (H = X Xᵀ, damped: H + λ·mean(diag H)·I; docs/METHOD.md §6)

    ΔW = −W[:, P] · (H⁻¹[P, P])⁻¹ · H⁻¹[P, :],      W' = W + ΔW   (so W'[:, P] = 0).

`H⁻¹[:, P]` comes from a Cholesky factorisation and a solve against the |P| unit vectors,
never from a full inverse. The update is rank |P|: ΔW = U Vᵀ with U = −W[:, P] M
([out, |P|]) and V = H⁻¹[:, P] ([n, |P|]), M = (H⁻¹[P, P])⁻¹. That factorisation is what
the distributed round ships (`pap.sharding.obs_round`): whoever holds H computes V, whoever
holds a piece of W applies its block of U Vᵀ.

Several removals in one round are applied one after another, each with H restricted to the
columns still there: orthogonal projections (in the ⟨A, B⟩ = tr(A H Bᵀ) inner product) onto
nested subspaces compose, so that equals the one-shot optimum for the union of the
removed columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def damped(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """`hessian` + damp·mean(diag)·I (a copy, in float64)."""
    h = hessian.double().clone()
    mean = h.diagonal().mean()
    # A layer whose sampled inputs are all zero (a dead channel set) has H = 0: any positive
    # diagonal makes it solvable, and W[:, P] X = 0 then, so the update is zero anyway.
    shift = damp * mean if mean > 0 else torch.tensor(1.0, dtype=h.dtype)
    h.diagonal().add_(shift)
    return h


@dataclass
class ObsSolution:
    """What the holder of H computes for one removal: V = H⁻¹[:, P] and the error Gram."""

    inverse_columns: torch.Tensor
    """V = (damped H)⁻¹[:, P], [n, |P|] float64."""
    error_gram: torch.Tensor
    """Vᵀ H V with the *undamped* H, [|P|, |P|]: ‖ΔW X‖² = tr(U · this · Uᵀ)."""
    removed_gram: torch.Tensor
    """H[P, P] (undamped): ‖W[:, P] X_P‖² = tr(W_P · this · W_Pᵀ), the error without update."""


def solve_columns(hessian: torch.Tensor, removed: Sequence[int], damp: float) -> ObsSolution:
    """V = H⁻¹[:, P] for the damped `hessian` ([n, n]) by Cholesky, plus the error Grams."""
    removed = torch.as_tensor(list(removed), dtype=torch.long)
    h = damped(hessian, damp)
    factor = torch.linalg.cholesky(h)
    units = torch.zeros(h.shape[0], len(removed), dtype=h.dtype, device=h.device)
    units[removed.to(h.device), torch.arange(len(removed), device=h.device)] = 1.0
    columns = torch.cholesky_solve(units, factor)
    undamped = hessian.double()
    removed = removed.to(h.device)
    return ObsSolution(columns, columns.T @ undamped @ columns, undamped[removed][:, removed])


def left_factor(removed_weights: torch.Tensor, inverse_columns: torch.Tensor,
                removed: Sequence[int]) -> torch.Tensor:
    """U = −W[:, P] · (H⁻¹[P, P])⁻¹ ([out, |P|], float64) from W[:, P] and V = H⁻¹[:, P]."""
    removed = torch.as_tensor(list(removed), dtype=torch.long)
    block = inverse_columns[removed]  # H⁻¹[P, P], symmetric positive definite
    return -torch.linalg.solve(block, removed_weights.double().T).T


def obs_update(weight: torch.Tensor, hessian: torch.Tensor, removed: Sequence[int], damp: float) -> torch.Tensor:
    """`weight` ([out, n]) after the OBS update for removing input columns `removed`
    (still present, set to zero: the update makes them zero up to rounding), in `weight`'s
    dtype. Single process, full tensors."""
    solution = solve_columns(hessian, removed, damp)
    left = left_factor(weight[:, list(removed)], solution.inverse_columns, removed)
    updated = weight.double() + left @ solution.inverse_columns.T
    updated[:, list(removed)] = 0
    return updated.to(weight.dtype)


def relative_error(left: torch.Tensor, error_gram: torch.Tensor, output_square: float) -> float:
    """‖ΔW X‖ / ‖W X‖ from U, Vᵀ H V and ‖Y‖² (summed over the same sampled tokens)."""
    if output_square <= 0:
        return 0.0
    squared = torch.einsum("ip,pq,iq->", left, error_gram, left).item()
    return max(squared, 0.0) ** 0.5 / output_square ** 0.5


def held_out_grams(samples: torch.Tensor, inverse_columns: torch.Tensor,
                   removed: Sequence[int]) -> tuple:
    """(Vᵀ H_h V, H_h[P, P]) for held-out input rows `samples` ([rows, n], not in H), without
    forming H_h = X_hᵀ X_h: with U from the fitted H, ‖ΔW X_h‖² = tr(U · first · Uᵀ) and the
    error of just dropping the columns tr(W_P · second · W_Pᵀ), both on tokens the update
    was not fitted to (`relative_error` takes them like the in-sample Grams)."""
    x = samples.to(inverse_columns.device, torch.float64)
    projected = x @ inverse_columns  # [rows, |P|]
    dropped = x[:, torch.as_tensor(list(removed), dtype=torch.long, device=x.device)]
    return projected.T @ projected, dropped.T @ dropped
