"""Adapt-Pruner's within-layer score (`prune.adapt_score: coupled`): a head or FFN channel
scores |w g| summed over every weight that goes with it, restated here from that description
with explicit row and column indices (not from pap's reshapes)."""

from types import SimpleNamespace

import pytest
import torch

from pap.pruning.accumulator import SaliencyAccumulator

HIDDEN, HEAD_DIM, FFN = 6, 2, 5


def _param(rows, cols, generator):
    param = torch.nn.Parameter(torch.randn(rows, cols, generator=generator))
    param.grad = torch.randn(rows, cols, generator=generator)
    return param


def _layer(heads_per_group, number, generator, cluster):
    heads, groups = sum(heads_per_group), len(heads_per_group)
    attention = SimpleNamespace(
        linear_qkv=SimpleNamespace(weight=_param((heads + 2 * groups) * HEAD_DIM, HIDDEN, generator)),
        linear_proj=SimpleNamespace(weight=_param(HIDDEN, heads * HEAD_DIM, generator)))
    if cluster:
        attention.heads_per_group = list(heads_per_group)
    else:
        attention.num_query_groups_per_partition, attention.num_attention_heads_per_partition = groups, heads
    mlp = SimpleNamespace(linear_fc1=SimpleNamespace(weight=_param(2 * FFN, HIDDEN, generator)),
                          linear_fc2=SimpleNamespace(weight=_param(HIDDEN, FFN, generator)))
    return SimpleNamespace(layer_number=number, self_attention=attention, mlp=mlp)


def _score(param, rows=None, cols=None):
    """sum |w g| over the given rows (all columns) or columns (all rows)."""
    w, g = param.detach(), param.grad
    if rows is not None:
        return sum(float((w[r] * g[r]).abs().sum()) for r in rows)
    return sum(float((w[:, c] * g[:, c]).abs().sum()) for c in cols)


def _reference(layer, heads_per_group):
    """Per head: its query rows, 1/n of its group's key and value rows, its output columns.
    Per FFN channel: its gate row, its up row, its down column."""
    qkv, proj = layer.self_attention.linear_qkv.weight, layer.self_attention.linear_proj.weight
    heads, row, head = [], 0, 0
    for n in heads_per_group:
        group_rows = list(range(row, row + (n + 2) * HEAD_DIM))
        q_rows, k_rows, v_rows = group_rows[:n * HEAD_DIM], group_rows[n * HEAD_DIM:(n + 1) * HEAD_DIM], \
            group_rows[(n + 1) * HEAD_DIM:]
        for i in range(n):
            own = q_rows[i * HEAD_DIM:(i + 1) * HEAD_DIM]
            cols = range((head + i) * HEAD_DIM, (head + i + 1) * HEAD_DIM)
            heads.append(_score(qkv, rows=own) + (_score(qkv, rows=k_rows) + _score(qkv, rows=v_rows)) / n
                         + _score(proj, cols=cols))
        row += (n + 2) * HEAD_DIM
        head += n
    fc1, fc2 = layer.mlp.linear_fc1.weight, layer.mlp.linear_fc2.weight
    channels = [_score(fc1, rows=[c]) + _score(fc1, rows=[FFN + c]) + _score(fc2, cols=[c]) for c in range(FFN)]
    return torch.tensor(heads, dtype=torch.float64), torch.tensor(channels, dtype=torch.float64)


@pytest.mark.parametrize("heads_per_group,cluster", [([2, 2], False), ([3, 1, 2], True)])
def test_coupled_scores_sum_every_weight_of_the_unit(heads_per_group, cluster):
    generator = torch.Generator().manual_seed(0)
    layers = [_layer(heads_per_group, 1, generator, cluster), _layer(heads_per_group, 2, generator, cluster)]
    model = SimpleNamespace(decoder=SimpleNamespace(layers=layers))
    coupled, output = SaliencyAccumulator("first", coupled=True), SaliencyAccumulator("first")
    coupled.update(model, HEAD_DIM)
    output.update(model, HEAD_DIM)
    for index, layer in enumerate(layers):
        heads, channels = _reference(layer, heads_per_group)
        torch.testing.assert_close(coupled.attn[index], heads, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(coupled.ffn[index], channels, rtol=1e-6, atol=1e-9)
        assert not torch.allclose(output.attn[index], heads)  # the output group alone is another score
    torch.testing.assert_close(coupled.stem, output.stem)  # hidden channels are scored as before


def test_output_only_is_the_option_and_coupled_the_default():
    from pap.config import PruneConfig

    assert PruneConfig().adapt_score == "coupled"
