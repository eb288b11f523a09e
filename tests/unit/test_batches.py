"""`pap.data.Batches`: consecutive steps read consecutive samples, DP ranks split each batch."""

import numpy as np

from pap.data import Batches


class Numbered:
    """A dataset whose sample i is all i's (enough to see which samples a batch holds)."""

    def __len__(self):
        return 1000

    def __getitem__(self, i):
        row = np.full(4, i)
        return {"tokens": row, "labels": row, "loss_mask": np.ones(4), "position_ids": np.arange(4)}


def samples(batches, consumed):
    return [int(t) for micro in batches.microbatches(consumed) for t in micro["tokens"][:, 0]]


def test_steps_read_consecutive_samples_and_dp_ranks_split_them():
    global_batch = 8
    single = Batches(Numbered(), micro_batch_size=2, global_batch_size=global_batch, dp_rank=0, dp_size=1)
    for step in range(3):
        assert samples(single, step * global_batch) == list(range(step * 8, step * 8 + 8))
    ranks = [Batches(Numbered(), 2, global_batch, dp_rank=r, dp_size=2) for r in range(2)]
    for step in range(3):
        per_rank = [samples(b, step * global_batch) for b in ranks]
        assert sorted(per_rank[0] + per_rank[1]) == list(range(step * 8, step * 8 + 8))
