"""The local round (each rank cuts its own shards, exchanging only what changes owner) gives
bit for bit the state of the gather-and-rebuild oracle: weights, fp32 masters, Adam's
moments and step, and the next step's loss, at every layout and in fp32 and bf16."""

import pytest
import torch

from tests.distributed.state_workers import local_round_equals_oracle
from tests.helpers import run_distributed, tiny_config

pytestmark = pytest.mark.slow

# 8 query heads in 4 KV groups, so that at TP=2 a group that goes makes the balanced
# placement move another group to the neighbouring rank.
MODEL = {"num_attention_heads": 8, "num_query_groups": 4}
ROUNDS = [
    [("ffn", (5, 5, 5, 5))],  # at TP=2, channel 64 of every layer moves from rank 1 to rank 0
    [("attn", (7, 7, 7, 7)), ("attn", (6, 6, 6, 6)), ("stem", (17,))],  # KV group 3 goes; group 1 moves
    [("ffn", (0, 126, 3, 64)), ("attn", (1, 0, 2, 5))],
]
LAYOUTS = {
    "tp2": (2, {"tp": 2}),
    "pp2": (2, {"pp": 2}),
    "tp2xpp2": (4, {"tp": 2, "pp": 2}),
    "dp2_distopt": (2, {"distributed_optimizer": True}),
    "tp2xdp2_distopt": (4, {"tp": 2, "distributed_optimizer": True}),
}
CASES = [("fp32", "tp2"), ("fp32", "tp2xpp2"), ("fp32", "tp2xdp2_distopt"),
         ("bf16", "tp2"), ("bf16", "pp2"), ("bf16", "dp2_distopt"), ("bf16", "tp2xdp2_distopt")]


def _run(dtype, layout, prefix, rounds=ROUNDS):
    world, parallel = LAYOUTS[layout]
    cfg = tiny_config(prefix, parallel={"tp": 1, "pp": 1, **parallel}, model={**MODEL, "params_dtype": dtype},
                      train={"iters": 10, "warmup_iters": 1, "eval_iters": 1})
    return run_distributed(local_round_equals_oracle, world, cfg, rounds)[0]


@pytest.mark.parametrize("dtype,layout", CASES, ids=[f"{d}-{l}" for d, l in CASES])
def test_local_round_equals_gather_and_rebuild_bit_for_bit(dtype, layout, random_dataset):
    result = _run(dtype, layout, random_dataset)
    for number, outcome in enumerate(result["rounds"], 1):
        local, oracle = outcome["states"]
        assert set(local) == set(oracle) == {"param", "master", "exp_avg", "exp_avg_sq"}
        for field in local:
            assert set(local[field]) == set(oracle[field])
            for name, tensor in local[field].items():
                expected = oracle[field][name]
                assert tensor.shape == expected.shape and tensor.dtype == expected.dtype, (number, field, name)
                assert torch.equal(tensor, expected), f"round {number}: {field} of {name} differs"
        assert outcome["steps"][0] == outcome["steps"][1] > 0
        assert outcome["losses"][0] == outcome["losses"][1], f"round {number}: next losses differ"


def test_a_round_sends_only_what_moves(random_dataset):
    """fp32, TP=2: an FFN round whose rebalancing moves one channel per layer from rank 1 to
    rank 0 sends exactly that channel's weight and two moments (fc1: 2 rows of 64, fc2: one
    column of 64; 4 layers; 4 bytes each); rank 0 sends nothing, and at PP=2 nobody does."""
    result = _run("fp32", "tp2", random_dataset, rounds=ROUNDS[:1])
    assert result["sent"] == [[0], [3 * 4 * (2 * 64 + 64) * 4]]
    result = _run("fp32", "pp2", random_dataset, rounds=ROUNDS)
    assert result["sent"] == [[0, 0, 0], [0, 0, 0]]
