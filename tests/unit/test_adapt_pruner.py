"""`prune.layers: adaptive` against Adapt-Pruner as its authors describe and publish it
(docs/METHOD.md §8), and increments that remove their budget.

The reference below is written from the published description, not from pap's code: a
layer's importance is the negated mean cosine of its input and output hidden states, centred
over the layers and divided by its largest absolute value; each step adds `delta - A *
importance` to every layer's cumulative sparsity relative to the starting widths and clips it
to [0, 0.99]; a layer then keeps int(start width x (1 - sparsity)) FFN channels and key
channels, the key channels taken away in whole KV groups (head_dim channels each).
"""

import random
from dataclasses import replace

import pytest
import torch

from pap.arch import Arch
from pap.pruning.adaptive import plan_increment
from pap.pruning.round_plan import SELECTION_MODES, RoundSettings, plan_round
from pap.pruning.select import Floors, GroupScores, remove_from_arch

ADAPTIVE = SELECTION_MODES["adaptive"]


# ---- the published algorithm, restated ----------------------------------------------------
def reference_importance(cosine):
    """Per layer: -cos, minus the mean over layers, over the largest absolute deviation."""
    raw = [-c for c in cosine]
    mean = sum(raw) / len(raw)
    centred = [v - mean for v in raw]
    largest = max(abs(v) for v in centred)
    return [v / largest for v in centred]


def reference_update(sparsity, cosine, delta, amplitude):
    """One step of the cumulative per-layer sparsity: + delta - A * importance, clipped to [0, 0.99]."""
    return [min(max(s + delta - amplitude * imp, 0.0), 0.99)
            for s, imp in zip(sparsity, reference_importance(cosine))]


def reference_removals(start_width, width, sparsity, channels_per_unit=1):
    """Units a layer loses at a step: its channels down to int(start x (1 - s)), whole units only."""
    start, now = start_width * channels_per_unit, width * channels_per_unit
    surplus = now - int(start * (1 - sparsity))
    return max(0, surplus) // channels_per_unit


# ---- helpers -------------------------------------------------------------------------------
def gqa_arch(rng, layers=6, hidden=32, head_dim=4):
    """A source model with equal KV groups (as pruning starts) and random widths."""
    groups, per_group, ffn = rng.randint(6, 12), rng.randint(1, 3), rng.randint(150, 400)
    return Arch(vocab_size=64, padded_vocab_size=64, hidden_size=hidden, head_dim=head_dim,
                heads_per_group=[[per_group] * groups for _ in range(layers)], ffn=[ffn] * layers,
                tie_embeddings=True)


def random_scores(arch, seed):
    g = torch.Generator().manual_seed(seed)
    layers = range(arch.num_layers)
    return GroupScores(attn=[torch.rand(arch.num_heads(l), generator=g, dtype=torch.float64) for l in layers],
                       ffn=[torch.rand(w, generator=g, dtype=torch.float64) for w in arch.ffn],
                       stem=torch.rand(arch.hidden_size, generator=g, dtype=torch.float64))


def settings(delta, amplitude):
    """The round settings of `prune.layers: adaptive` with everything else at its default."""
    return RoundSettings(Floors(), 1, None, 1, delta, amplitude)


def kv_heads(arch, layer):
    return sum(1 for n in arch.heads_per_group[layer] if n)


def group_params(arch, layer):
    """Parameters of layer `layer`'s largest KV group with its query heads (q, k, v, o)."""
    return (2 * max(arch.heads_per_group[layer]) + 2) * arch.head_dim * arch.hidden_size


def check_against_reference(source, before, plan, cosine, delta, amplitude):
    """pap's increment from `before` against one published step from `before`'s realised sparsity."""
    after = plan.end
    layers = range(source.num_layers)
    realised_ffn = [1 - before.ffn[l] / source.ffn[l] for l in layers]
    realised_kv = [1 - kv_heads(before, l) / kv_heads(source, l) for l in layers]
    target_ffn = reference_update(realised_ffn, cosine, delta, amplitude)
    target_kv = reference_update(realised_kv, cosine, delta, amplitude)
    assert plan.notes[0]["layer_sparsity"] == pytest.approx(target_ffn, abs=1e-12)
    budget = 0.0
    for l in layers:
        their_ffn = reference_removals(source.ffn[l], before.ffn[l], target_ffn[l])
        their_kv = reference_removals(kv_heads(source, l), kv_heads(before, l), target_kv[l], source.head_dim)
        ours_ffn = before.ffn[l] - after.ffn[l]
        ours_kv = kv_heads(before, l) - kv_heads(after, l)
        # Whole KV groups: every group is either untouched or gone.
        assert all(n in (0, m) for n, m in zip(after.heads_per_group[l], before.heads_per_group[l]))
        # The published counts floor each layer; pap rounds them so the total meets the budget.
        assert abs(ours_ffn - their_ffn) <= 1, (l, ours_ffn, their_ffn)
        assert abs(ours_kv - their_kv) <= 1, (l, ours_kv, their_kv)
        attn_params = (2 * before.num_heads(l) + 2 * kv_heads(before, l)) * before.head_dim * before.hidden_size
        unit = attn_params / kv_heads(before, l)  # a KV group of the layer, on average
        budget += (target_ffn[l] - realised_ffn[l]) * source.ffn[l] * 3 * source.hidden_size
        budget += (target_kv[l] - realised_kv[l]) * kv_heads(source, l) * unit
    removed = before.num_params() - after.num_params()
    assert abs(removed - budget) <= max(group_params(before, l) for l in layers) / 2, (removed, budget)


# ---- the reference test --------------------------------------------------------------------
@pytest.mark.parametrize("case", range(4))
def test_first_increment_is_the_published_step(case):
    """From the source widths (the first increment), with Adapt-Pruner's settings (delta = A =
    0.02) and larger ones: pap's per-layer targets are the published update's, its KV groups
    and FFN channels per layer within one of the published counts."""
    rng = random.Random(case)
    source = gqa_arch(rng)
    cosine = [rng.uniform(0.3, 0.99) for _ in range(source.num_layers)]
    delta, amplitude = [(0.02, 0.02), (0.1, 0.06), (0.05, 0.08), (0.2, 0.1)][case]
    plan = plan_round(random_scores(source, case), source, settings(delta, amplitude), 0, ADAPTIVE, cosine)
    check_against_reference(source, source, plan, cosine, delta, amplitude)


@pytest.mark.parametrize("case", range(3))
def test_later_increments_follow_the_cumulative_published_update(case):
    """Increments after the first: sparsity is cumulative relative to the source widths
    (`settings.source`), the state read off the current widths, clipped at 0 and 0.99."""
    rng = random.Random(10 + case)
    source = gqa_arch(rng)
    config = replace(settings(0.06, 0.05), source=source)
    arch = source
    for step in range(4):
        cosine = [rng.uniform(0.3, 0.99) for _ in range(source.num_layers)]
        plan = plan_round(random_scores(arch, step), arch, config, 0, ADAPTIVE, cosine)
        check_against_reference(source, arch, plan, cosine, 0.06, 0.05)
        arch = plan.end


def test_published_clips_a_nearly_empty_layer_at_099():
    source = Arch(vocab_size=64, padded_vocab_size=64, hidden_size=32, head_dim=4,
                  heads_per_group=[[2] * 8] * 3, ffn=[400] * 3, tie_embeddings=True)
    arch = replace(source, ffn=[6, 300, 300])  # layer 0 at 0.985 of its FFN gone
    cosine = [0.9, 0.5, 0.7]
    plan = plan_round(random_scores(arch, 0), arch, replace(settings(0.05, 0.02), source=source), 0, ADAPTIVE, cosine)
    assert plan.notes[0]["layer_sparsity"][0] == pytest.approx(0.99)
    check_against_reference(source, arch, plan, cosine, 0.05, 0.02)


# ---- budgets -------------------------------------------------------------------------------
def wide_arch():
    """24 layers of 8 KV groups x 4 heads: an increment is hundreds of groups and channels."""
    return Arch(vocab_size=512, padded_vocab_size=512, hidden_size=128, head_dim=8,
                heads_per_group=[[4] * 8] * 24, ffn=[512] * 24, tie_embeddings=True)


@pytest.mark.parametrize("increment", [0.05, 0.1])
def test_scaled_increment_hits_its_budget_within_one_group(increment):
    """`adapt_rule: scaled` with single heads: an increment of x removes x of the current
    parameters to within one KV group (KV heads that go with their last query head count)."""
    arch = wide_arch()
    rng = random.Random(3)
    for seed in range(3):
        cosine = [rng.uniform(0.3, 0.99) for _ in range(arch.num_layers)]
        after = arch
        for removal in plan_increment(random_scores(arch, seed), arch, cosine, increment, 0.5, 0):
            after = remove_from_arch(after, removal)
        removed = arch.num_params() - after.num_params()
        assert abs(removed - increment * arch.num_params()) <= group_params(arch, 0), (removed, increment)


@pytest.mark.parametrize("unit", ["group", "head"])
def test_published_increment_hits_its_budget_within_one_group(unit):
    """The default rule: the increment removes sum_l (delta - A z_l) x layer l's source
    parameters (heads' and FFN's) to within one KV group."""
    arch = wide_arch()
    rng = random.Random(4)
    cosine = [rng.uniform(0.3, 0.99) for _ in range(arch.num_layers)]
    plan = plan_round(random_scores(arch, 0), arch, replace(settings(0.02, 0.02), adapt_unit=unit), 0, ADAPTIVE, cosine)
    prunable = [arch.layer_params(l) - 2 * arch.hidden_size for l in range(arch.num_layers)]
    budget = sum((0.02 - 0.02 * z) * p for z, p in zip(reference_importance(cosine), prunable))
    removed = arch.num_params() - plan.end.num_params()
    assert abs(removed - budget) <= group_params(arch, 0), (removed, budget)


def test_an_increment_stops_at_the_target():
    arch = wide_arch()
    target = arch.num_params() - 50_000
    plan = plan_round(random_scores(arch, 0), arch, settings(0.02, 0.02), target, ADAPTIVE, [0.5] * 24)
    assert target - group_params(arch, 0) < plan.end.num_params() <= target


def test_group_unit_respects_the_floors():
    """KV groups go whole only while `min_kv_heads` and `min_heads` allow; the budget is then
    met with FFN channels."""
    arch = Arch(vocab_size=64, padded_vocab_size=64, hidden_size=32, head_dim=4,
                heads_per_group=[[2, 2, 2]] * 4, ffn=[200] * 4, tie_embeddings=True)
    config = replace(settings(0.3, 0.1), floors=Floors(heads=3, kv_heads=2))
    plan = plan_round(random_scores(arch, 0), arch, config, 0, ADAPTIVE, [0.9, 0.5, 0.7, 0.6])
    for before, after in zip(arch.heads_per_group, plan.end.heads_per_group):
        assert sum(1 for n in after if n) >= 2 and sum(after) >= 3
        assert all(n in (0, m) for n, m in zip(after, before))
    prunable = [arch.layer_params(l) - 2 * arch.hidden_size for l in range(4)]
    budget = sum((0.3 - 0.1 * z) * p for z, p in zip(reference_importance([0.9, 0.5, 0.7, 0.6]), prunable))
    assert abs(arch.num_params() - plan.end.num_params() - budget) <= group_params(arch, 0)
