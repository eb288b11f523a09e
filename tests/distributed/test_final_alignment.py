"""`prune.final_multiple_of`: the round that reaches the target also removes the least
salient extra FFN and hidden channels until both widths are multiples of it, logs them as
ordinary removals, and decides the same at TP=2 as at TP=1."""

import json

import pytest

from tests.distributed.workers import pruning_run
from tests.helpers import run_distributed, tiny_config

pytestmark = pytest.mark.slow
STEPS = 6
MULTIPLE = 8


def _config(prefix, tp, multiple):
    # The FFN floor (120, a multiple of 8) stops FFN removals early, so the run goes on to
    # hidden channels and reaches the target at a hidden size that is not a multiple of 8.
    return tiny_config(prefix, parallel={"tp": tp, "pp": 1}, train={"iters": 12, "warmup_iters": 1},
                       prune={"enabled": True, "target_params": 0.88, "grad_steps": 1, "prune_steps": 4,
                              "metric": "mix", "min_ffn": 120, "min_kv_heads": 2, "final_multiple_of": multiple})


def test_the_last_round_aligns_widths_with_the_least_salient_extra_removals(random_dataset):
    plain = run_distributed(pruning_run, 1, _config(random_dataset, 1, 1), STEPS)[0]
    aligned = run_distributed(pruning_run, 1, _config(random_dataset, 1, MULTIPLE), STEPS)[0]
    plain_arch, arch = json.loads(plain["arch"]), json.loads(aligned["arch"])
    assert plain_arch["hidden_size"] % MULTIPLE != 0  # without it the run stops at an odd width
    assert arch["hidden_size"] % MULTIPLE == 0 and all(width % MULTIPLE == 0 for width in arch["ffn"])
    assert arch["hidden_size"] > plain_arch["hidden_size"] - MULTIPLE  # only what alignment needs
    # Alignment adds removals to the round that reaches the target; everything before is the same.
    count = len(plain["removals"])
    assert aligned["removals"][:count] == plain["removals"]
    extra = aligned["removals"][count:]
    assert extra and {kind for kind, _ in extra} == {"stem"}
    assert len(extra) == plain_arch["hidden_size"] % MULTIPLE


def test_the_last_round_aligns_widths_the_same_at_tp1_and_tp2(random_dataset):
    aligned = run_distributed(pruning_run, 1, _config(random_dataset, 1, MULTIPLE), STEPS)[0]
    tp2 = run_distributed(pruning_run, 2, _config(random_dataset, 2, MULTIPLE), STEPS)[0]
    assert tp2["removals"] == aligned["removals"] and tp2["arch"] == aligned["arch"]
