"""Group selection and removal against a plain implementation of docs/METHOD.md's formulas."""

import pytest
import torch

from pap.arch import Arch
from pap.pruning.remove import prune_state
from pap.pruning.saliency import element_saliency, fc2_scores, proj_scores
from pap.pruning.select import Floors, GroupScores, choose, remove_from_arch


def small_arch(**kw):
    base = dict(vocab_size=50, padded_vocab_size=64, hidden_size=8, head_dim=2,
                heads_per_group=[[2, 2], [2, 2], [2, 2]], ffn=[6, 6, 6], tie_embeddings=False)
    base.update(kw)
    return Arch(**base)


def test_metrics_follow_the_formulas():
    w, g, f = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0]), torch.tensor([4.0, 1.0])
    assert torch.allclose(element_saliency("first", w, g, None), torch.tensor([1.0, 3.0]))
    assert torch.allclose(element_saliency("mix", w, g, f), torch.tensor([abs(1 - 8.0), abs(-3 - 0.5)]))
    assert torch.allclose(element_saliency("obd", w, g, f), torch.tensor([8.0, 0.5]))
    with pytest.raises(KeyError):
        element_saliency("l3", w, g, f)


def reference_choice(proj, fc2, head_dim):
    """docs/METHOD.md §4 written out with loops, from element scores of every layer."""
    layers = len(proj)
    A = [[sum(proj[l][i][c] for i in range(len(proj[l])) for c in range(h * head_dim, (h + 1) * head_dim))
          for h in range(len(proj[l][0]) // head_dim)] for l in range(layers)]
    B = [[sum(fc2[l][i][j] for i in range(len(fc2[l]))) for j in range(len(fc2[l][0]))] for l in range(layers)]
    C = [sum(sum(proj[l][i]) + sum(fc2[l][i]) for l in range(layers)) for i in range(len(proj[0]))]
    s_attn = sum(min(a) for a in A)
    s_ffn = sum(min(b) for b in B)
    s_stem = min(C)
    best = min((s_attn, 0), (s_ffn, 1), (s_stem, 2))[1]
    if best == 0:
        return "attn", tuple(a.index(min(a)) for a in A)
    if best == 1:
        return "ffn", tuple(b.index(min(b)) for b in B)
    return "stem", (C.index(min(C)),)


@pytest.mark.parametrize("seed", range(8))
def test_choice_matches_reference(seed):
    arch = small_arch()
    g = torch.Generator().manual_seed(seed)
    scale = [1.0, 1.0, 1.0]
    scale[seed % 3] = 0.05  # make each kind win in turn
    proj = [torch.rand(8, 8, generator=g) * scale[0] for _ in range(3)]
    fc2 = [torch.rand(8, 6, generator=g) * scale[1] for _ in range(3)]
    stem_bias = torch.rand(8, generator=g) * scale[2]
    proj = [p * (0.2 + stem_bias[:, None]) for p in proj]
    attn, ffn, stem = [], [], torch.zeros(8)
    for l in range(3):
        per_head, hidden_p = proj_scores(proj[l], 2)
        per_channel, hidden_f = fc2_scores(fc2[l])
        attn.append(per_head)
        ffn.append(per_channel)
        stem += hidden_p + hidden_f
    removal = choose(GroupScores(attn, ffn, stem), arch)
    kind, indices = reference_choice([p.tolist() for p in proj], [f.tolist() for f in fc2], 2)
    assert (removal.kind, removal.indices) == (kind, indices)


def test_ties_break_to_lowest_index_and_kind_order():
    arch = small_arch()
    flat = GroupScores([torch.ones(4)] * 3, [torch.full((6,), 4 / 6)] * 3, torch.full((8,), 3.0))
    removal = choose(flat, arch)  # S_attn = 3 = S_stem, S_ffn = 2: ffn wins
    assert removal.kind == "ffn" and removal.indices == (0, 0, 0)
    flat.ffn = [torch.ones(6)] * 3
    assert choose(flat, arch).kind == "attn"  # 3 == 3 == 3: attn first


def test_floors_and_normalize():
    arch = small_arch(ffn=[2, 2, 2])
    scores = GroupScores([torch.ones(4)] * 3, [torch.zeros(2)] * 3, torch.full((8,), 10.0))
    assert choose(scores, arch).kind == "ffn"
    assert choose(scores, arch, floors=Floors(ffn=2)).kind == "attn"
    # Per parameter, one hidden channel (~2x64 embedding + all layers) is cheapest here.
    scores = GroupScores([torch.ones(4)] * 3, [torch.ones(2)] * 3, torch.full((8,), 4.0))
    assert choose(scores, arch).kind == "attn"
    assert choose(scores, arch, normalize="params").kind == "stem"


def test_kv_head_goes_with_its_last_query_head():
    arch = small_arch(heads_per_group=[[1, 3], [2, 2], [3, 1]])
    removal = choose(GroupScores([torch.tensor([0.0, 1, 1, 1]), torch.tensor([1.0, 1, 0, 1]),
                                  torch.tensor([1.0, 1, 1, 0])], [torch.ones(6)] * 3, torch.full((8,), 99.0)), arch)
    after = remove_from_arch(arch, removal)
    assert after.heads_per_group == [[0, 3], [2, 1], [3, 0]]
    assert [after.num_kv_heads(l) for l in range(3)] == [1, 2, 1]
    assert arch.num_params() - after.num_params() == 3 * (2 * 2 * 8) + 2 * (2 * 2 * 8)


def megatron_shaped_state(arch, seed=0):
    from tests.hf.test_remote_code import random_full_state

    return random_full_state(arch, seed)


@pytest.mark.parametrize("kind", ["attn", "ffn", "stem"])
def test_removal_matches_arch_and_is_exact_on_zeroed_groups(kind):
    """Shapes follow the new Arch; zeroing a group then removing it leaves the logits unchanged."""
    from pap.pruning.select import Removal
    from tests.hf.test_remote_code import TOKENS, reference_logits

    arch = small_arch(vocab_size=300, padded_vocab_size=384, heads_per_group=[[1, 3], [2, 2], [3, 1]])
    full = megatron_shaped_state(arch)
    removal = Removal(kind, {"attn": (0, 3, 1), "ffn": (5, 0, 2), "stem": (4,)}[kind], 0.0, ())
    after_arch = remove_from_arch(arch, removal)
    if kind != "stem":
        zeroed = dict(full)
        for l, index in enumerate(removal.indices):
            p = f"decoder.layers.{l}."
            if kind == "attn":
                proj = zeroed[p + "self_attention.linear_proj.weight"].clone()
                proj[:, index * 2:(index + 1) * 2] = 0
                zeroed[p + "self_attention.linear_proj.weight"] = proj
            else:
                fc2 = zeroed[p + "mlp.linear_fc2.weight"].clone()
                fc2[:, index] = 0
                zeroed[p + "mlp.linear_fc2.weight"] = fc2
        pruned = prune_state(zeroed, arch, removal)
        torch.testing.assert_close(reference_logits(pruned, after_arch, TOKENS),
                                   reference_logits(zeroed, arch, TOKENS), rtol=1e-6, atol=1e-6)
    else:
        pruned = prune_state(full, arch, removal)
    from tests.hf.test_remote_code import random_full_state

    expected_shapes = {k: v.shape for k, v in random_full_state(after_arch).items()}
    assert {k: v.shape for k, v in pruned.items()} == expected_shapes


def test_kv_floor_protects_the_last_heads_of_groups():
    """With min_kv_heads=2 a layer at two KV heads gives up a head only from a larger group."""
    arch = small_arch(heads_per_group=[[1, 3], [1, 3], [2, 2]])
    scores = GroupScores([torch.tensor([0.0, 1, 2, 3])] * 3, [torch.ones(6)] * 3, torch.full((8,), 99.0))
    assert choose(scores, arch).indices == (0, 0, 0)
    assert choose(scores, arch, floors=Floors(kv_heads=2)).indices == (1, 1, 0)
    arch = small_arch(heads_per_group=[[1, 1], [2, 2], [2, 2]])
    assert choose(scores, arch, floors=Floors(kv_heads=2)).kind == "ffn"  # layer 0 has nothing removable
