"""`prune.layers: greedy | adaptive`: the choice rules against direct restatements, and
removals that leave layers whole (index -1)."""

import pytest

import torch

from pap.arch import Arch
from pap.pruning.adaptive import layer_weights, plan_increment
from pap.pruning.remove import kept_indices
from pap.pruning.select import UNTOUCHED, Floors, GroupScores, Removal, choose_greedy, remove_from_arch


def arch():
    return Arch(vocab_size=256, padded_vocab_size=256, hidden_size=16, head_dim=4,
                heads_per_group=[[2, 2], [3, 1], [1, 1]], ffn=[8, 6, 5], tie_embeddings=False)


def scores(a, seed):
    g = torch.Generator().manual_seed(seed)
    return GroupScores(attn=[torch.rand(a.num_heads(l), generator=g, dtype=torch.float64) for l in range(3)],
                       ffn=[torch.rand(w, generator=g, dtype=torch.float64) for w in a.ffn],
                       stem=torch.rand(16, generator=g, dtype=torch.float64) * 3)


def test_greedy_is_the_least_salient_single_group():
    a = arch()
    for seed in range(6):
        s = scores(a, seed)
        for normalize in (None, "params"):
            removal = choose_greedy(s, a, normalize)
            # Restated: every single group with the parameters it removes, the smallest ranked.
            options = []
            for l in range(3):
                for h in range(a.num_heads(l)):
                    r = Removal("attn", tuple(h if m == l else UNTOUCHED for m in range(3)), 0.0, ())
                    options.append((s.attn[l][h].item(), r))
                for j in range(a.ffn[l]):
                    r = Removal("ffn", tuple(j if m == l else UNTOUCHED for m in range(3)), 0.0, ())
                    options.append((s.ffn[l][j].item(), r))
            options += [(s.stem[i].item(), Removal("stem", (i,), 0.0, ())) for i in range(16)]
            if normalize:
                options = [(v / (a.num_params() - remove_from_arch(a, r).num_params()), r) for v, r in options]
            best = min(options, key=lambda o: o[0])[1]
            assert (removal.kind, removal.indices) == (best.kind, best.indices)


def test_greedy_respects_floors_per_layer():
    a = arch()
    s = scores(a, 0)
    s.ffn[2][:] = -1.0  # layer 2's channels are the cheapest, but layer 2 is at its floor
    removal = choose_greedy(s, a, floors=Floors(ffn=5, heads=2, hidden=16, kv_heads=2), kinds=("ffn",))
    assert removal.kind == "ffn" and removal.indices[2] == UNTOUCHED


def test_untouched_layers_keep_their_tensors():
    a = arch()
    removal = Removal("attn", (UNTOUCHED, 3, UNTOUCHED), 0.0, ())
    after = remove_from_arch(a, removal)
    assert after.heads_per_group == [[2, 2], [3, 0], [1, 1]] and after.ffn == a.ffn
    assert kept_indices("decoder.layers.0.self_attention.linear_qkv.weight", (32, 16), a, [removal]) == [None, None]
    rows, _ = kept_indices("decoder.layers.1.self_attention.linear_qkv.weight", (32, 16), a, [removal])
    assert len(rows) == 32 - 12  # the last head of its group takes its K and V rows too


def test_adaptive_prunes_similar_layers_more():
    assert layer_weights([0.9, 0.5, 0.7], 0.5) == pytest.approx([1.5, 0.5, 1.0])
    a = Arch(vocab_size=256, padded_vocab_size=256, hidden_size=16, head_dim=4,
             heads_per_group=[[4, 4]] * 3, ffn=[64] * 3, tie_embeddings=False)
    removals = plan_increment(scores(a, 1), a, [0.95, 0.2, 0.6], 0.1, 0.5, 0)
    per_layer = [sum(r.indices[l] != UNTOUCHED for r in removals if r.kind == "ffn") for l in range(3)]
    assert per_layer[0] > per_layer[2] > per_layer[1]


def test_kept_indices_follow_the_cuts_through_many_mixed_removals():
    """The survivors `kept_indices` computes (sorted-position bookkeeping, fast enough for an
    adaptive increment's thousands of removals) are what cutting a tensor that records its
    own original positions gives, removal after removal, for every tensor and kind."""
    import random

    import torch

    from pap.arch import Arch
    from pap.pruning.remove import prune_tensor
    from pap.pruning.select import UNTOUCHED, Removal, remove_from_arch

    arch = Arch(vocab_size=32, padded_vocab_size=32, hidden_size=16, head_dim=4,
                heads_per_group=[[2, 2], [2, 2], [2, 2]], ffn=[12, 12, 12], tie_embeddings=False)
    rng, removals, after = random.Random(0), [], arch
    while len(removals) < 30:
        kind = rng.choice(["attn", "ffn", "stem"])
        layers = [l for l in range(3) if rng.random() < 0.5] or [0]
        if kind == "stem":
            removal = Removal("stem", (rng.randrange(after.hidden_size),), 0.0, ())
        elif kind == "attn":
            if any(after.num_heads(l) <= 2 for l in layers):
                continue
            removal = Removal("attn", tuple(rng.randrange(after.num_heads(l)) if l in layers else UNTOUCHED
                                            for l in range(3)), 0.0, ())
        else:
            removal = Removal("ffn", tuple(rng.randrange(after.ffn[l]) if l in layers else UNTOUCHED
                                           for l in range(3)), 0.0, ())
        removals.append(removal)
        after = remove_from_arch(after, removal)
    names = {"embedding.word_embeddings.weight": (32, 16), "output_layer.weight": (32, 16),
             "decoder.final_layernorm.weight": (16,)}
    for l in range(3):
        names.update({f"decoder.layers.{l}.self_attention.linear_qkv.weight": (32, 16),
                      f"decoder.layers.{l}.self_attention.linear_proj.weight": (16, 16),
                      f"decoder.layers.{l}.mlp.linear_fc1.weight": (24, 16),
                      f"decoder.layers.{l}.mlp.linear_fc2.weight": (16, 12),
                      f"decoder.layers.{l}.input_layernorm.weight": (16,)})
    for name, shape in names.items():
        for dim in range(len(shape)):
            positions = torch.arange(shape[dim]).view([-1 if d == dim else 1 for d in range(len(shape))])
            tensor = positions.expand(shape).clone()
            state = arch
            for removal in removals:
                tensor = prune_tensor(name, tensor, state, removal)
                state = remove_from_arch(state, removal)
            survivors = tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1)[:, 0] if tensor.numel() else None
            kept = kept_indices(name, shape, arch, removals)[dim]
            if kept is None:
                assert tensor.shape[dim] == shape[dim], name
            else:
                assert torch.equal(kept, survivors), (name, dim)
