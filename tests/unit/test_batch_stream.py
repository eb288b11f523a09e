"""Data loader workers read ahead in the same order: `BatchStream` with workers gives every
step exactly the micro batches of the synchronous reader, also from a resumed step."""

import torch

from pap.data import Batches, BatchStream


class _Samples(torch.utils.data.Dataset):
    """Sample i: tokens that encode i, as megatron's GPTDataset items look."""

    def __len__(self):
        return 1000

    def __getitem__(self, i):
        tokens = torch.arange(8) + 100 * i
        return {"tokens": tokens, "labels": tokens + 1, "loss_mask": torch.ones(8), "position_ids": torch.arange(8)}


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in Batches.FIELDS)


def test_workers_give_the_synchronous_batches_in_order_and_after_a_jump():
    batches = Batches(_Samples(), micro_batch_size=2, global_batch_size=8, dp_rank=1, dp_size=2)
    stream = BatchStream(batches, workers=2, prefetch=2)
    try:
        for step in range(5):
            assert _same(stream.microbatches(8 * step), batches.microbatches(8 * step)), step
        # A resume (or anything else) asks for another step: the workers restart there.
        assert _same(stream.microbatches(8 * 40), batches.microbatches(8 * 40))
        assert _same(stream.microbatches(8 * 41), batches.microbatches(8 * 41))
        assert _same(stream.microbatches(3), batches.microbatches(3))  # not a step boundary: read directly
    finally:
        stream.close()
    assert _same(BatchStream(batches).microbatches(16), batches.microbatches(16))
