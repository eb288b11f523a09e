"""`train.seed`, what `bench/retention.py --seeds` varies: two seeds draw different training
samples in a different order, and one seed run twice gives bit-identical losses."""

import numpy as np
import pytest

from pap.config import load_config
from tests.helpers import tiny_config
from tests.integration.test_train_cli import run, step_losses, write_config


def _first_samples(random_dataset, tmp_path, seed, count=16):
    from pap.data import build_datasets

    tmp_path.mkdir(parents=True, exist_ok=True)

    cfg = load_config(write_config(tmp_path / f"data_{seed}.yaml", tiny_config(random_dataset, train={"seed": seed})))
    train, _ = build_datasets(cfg, train_samples=count, valid_samples=0, cache_dir=str(tmp_path / f"cache_{seed}"))
    return np.stack([train[i]["tokens"].numpy() for i in range(count)])


def test_seeds_change_the_sample_order_and_one_seed_repeats_it(random_dataset, tmp_path):
    first, again = _first_samples(random_dataset, tmp_path, 1), _first_samples(random_dataset, tmp_path / "again", 1)
    other = _first_samples(random_dataset, tmp_path, 2)
    np.testing.assert_array_equal(first, again)
    # Another seed: the first 16 samples are not those of seed 1, nor a permutation of them.
    assert not np.array_equal(first, other)
    assert sorted(map(bytes, first)) != sorted(map(bytes, other))


@pytest.mark.slow
def test_one_seed_gives_bit_identical_losses_and_another_seed_other_losses(random_dataset, tmp_path):
    losses = {}
    for name, seed in (("first", 7), ("again", 7), ("other", 8)):
        run_dir = tmp_path / name
        cfg = tiny_config(random_dataset, train={"seed": seed, "iters": 4, "eval_iters": 0},
                          checkpoint={"dir": str(run_dir), "save_interval": 0})
        run(1, write_config(tmp_path / f"{name}.yaml", cfg), log=tmp_path / f"{name}.log")
        losses[name] = step_losses(run_dir / "metrics.jsonl")
    assert sorted(losses["first"]) == [1, 2, 3, 4]
    assert losses["first"] == losses["again"]  # exact float equality, every step
    assert all(losses["first"][i] != losses["other"][i] for i in losses["first"])
