"""The Hessian hooks record what the GEMM multiplies, on the local layer spec and on
Transformer Engine's fused norm-and-linear layers (a stand-in with TE's interface: TE
itself needs a GPU)."""

import pytest
import torch

from pap.sharding.hessians import HessianWindow


class StandInLayerNormLinear(torch.nn.Module):
    """The interface of Transformer Engine's `LayerNormLinear` as megatron wraps it
    (`TELayerNormColumnParallelLinear`): the norm's fields on the module, the norm fused in
    front of the GEMM, `(output, bias)` returned. Keeps the tensor its GEMM multiplied."""

    def __init__(self, hidden, out, normalization="RMSNorm", zero_centered_gamma=False, eps=1e-5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.normalization, self.zero_centered_gamma, self.eps = normalization, zero_centered_gamma, eps
        self.weight = torch.nn.Parameter(torch.randn(out, hidden, generator=g))
        self.layer_norm_weight = torch.nn.Parameter(0.5 + torch.rand(hidden, generator=g))
        self.layer_norm_bias = (torch.nn.Parameter(torch.randn(hidden, generator=g))
                                if normalization == "LayerNorm" else None)
        self.gemm_input = None

    def forward(self, x):
        gamma = self.layer_norm_weight + 1 if self.zero_centered_gamma else self.layer_norm_weight
        if self.normalization == "RMSNorm":
            normed = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * gamma
        else:
            normed = torch.nn.functional.layer_norm(x, x.shape[-1:], gamma, self.layer_norm_bias, self.eps)
        self.gemm_input = normed.detach()
        return normed @ self.weight.T, None


class LocalLinear(torch.nn.Module):
    """The local spec: a plain linear layer after a separate norm module."""

    def __init__(self, hidden, out):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out, hidden))
        self.gemm_input = None

    def forward(self, x):
        self.gemm_input = x.detach()
        return x @ self.weight.T, None


def _recorded(module, seq=16, batch=3, hidden=8):
    """What the window's hook on `module` samples in one training forward, and the GEMM's
    own input at the same positions."""
    window = HessianWindow(tokens_per_step=batch * 5, global_batch=batch, seq_length=seq, tp=1, dp=1)
    key = ("qkv", 0)
    module.register_forward_hook(window._hook(key))
    module.train()
    x = 3.0 * torch.randn(seq, batch, hidden) + 1.0  # [s, b, h] as megatron's layers take it
    module(x)
    where = window._positions(seq)
    want = module.gemm_input.index_select(0, where).reshape(-1, hidden).float()
    return torch.cat(window._pending[key]), want


@pytest.mark.parametrize("normalization,zero_centered", [("RMSNorm", False), ("RMSNorm", True), ("LayerNorm", False)])
def test_transformer_engine_hook_records_the_gemm_input(normalization, zero_centered):
    got, want = _recorded(StandInLayerNormLinear(8, 5, normalization, zero_centered))
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got - want).abs().max()


def test_local_hook_records_the_gemm_input():
    got, want = _recorded(LocalLinear(8, 5))
    assert torch.equal(got, want)


def _single_rank_window(module, key, holdout, seq, batch, per_sequence, hidden):
    """A window on one rank (no collectives) hooked to `module` alone."""
    from types import SimpleNamespace

    from pap.sharding.hessians import StageGroup

    window = HessianWindow(per_sequence * batch, batch, seq, tp=1, dp=1, holdout=holdout)
    window.stage = StageGroup(None, [0], [0], [0], 0)
    window.arch = SimpleNamespace(hidden_size=hidden)
    window.blocks, window.owners = [key], {key: 0}
    window.columns = {(key, 0): torch.arange(hidden)}
    module.register_forward_hook(window._hook(key))
    return window


def test_held_out_positions_stay_out_of_the_hessian():
    """One position in four of every sequence is held out, rotating with the step: H holds
    exactly the other rows (over two micro-batches a step), the held-out rows and both
    shares of ‖Y‖² are kept apart, and over four steps every position is held out once."""
    seq, batch, hidden, per_sequence, key = 16, 4, 8, 4, ("qkv", 0)
    module = LocalLinear(hidden, 5).train()
    window = _single_rank_window(module, key, 0.25, seq, batch, per_sequence, hidden)
    fitted, held, squares = [], [], torch.zeros(2, dtype=torch.float64)
    for step in range(4):
        mask = window.held_mask()
        assert mask.tolist() == [(j + step) % 4 == 3 for j in range(per_sequence)]
        for _ in range(2):  # two micro-batches of two sequences
            x = torch.randn(seq, batch // 2, hidden)
            y, _ = module(x)
            where = window._positions(seq)
            rows = x.index_select(0, where)  # [positions, sequences, hidden]
            fitted.append(rows[~mask].reshape(-1, hidden))
            held.append(rows[mask].reshape(-1, hidden))
            out = y.detach().index_select(0, where).double().square().sum((1, 2))
            squares += torch.stack([out[~mask].sum(), out[mask].sum()])
        window.end_step()
    fit, rest = torch.cat(fitted).double(), torch.cat(held).double()
    assert torch.allclose(window.hessians[key], fit.T @ fit, rtol=1e-12, atol=1e-9)
    assert window.held_positions == 4
    assert torch.equal(window.held_out[key].double(), rest)
    assert rest.shape[0] == 4 * batch and fit.shape[0] == 12 * batch
    got = torch.tensor([window.output_square[key].item(), window.held_square[key].item()], dtype=torch.float64)
    assert torch.allclose(got, squares, rtol=1e-12)


def test_no_holdout_keeps_every_row_in_the_hessian():
    seq, batch, hidden, key = 8, 2, 6, ("fc1", 0)
    module = LocalLinear(hidden, 3).train()
    window = _single_rank_window(module, key, 0.0, seq, batch, 3, hidden)
    x = torch.randn(seq, batch, hidden)
    module(x)
    rows = x.index_select(0, window._positions(seq)).reshape(-1, hidden).double()
    window.end_step()
    assert torch.allclose(window.hessians[key], rows.T @ rows, rtol=1e-12, atol=1e-9)
    assert window.held_positions == 0 and not window.held_out
