"""A loss term plugs into the trainer from outside (`Trainer(..., forward_step=...)`).

With a term that is identically zero the run is bit-identical to the default one, and the
term is called on every micro batch of the last stage (at PP=2 too, where the first stage
never sees a loss); a term that is not zero changes the training, while the logged
`lm loss` stays the next-token loss.
"""

import pytest

from tests.helpers import run_distributed, tiny_config

pytestmark = pytest.mark.slow

STEPS = 3


def _losses_with_term(cfg_dict: dict, scale):
    """Training losses with `scale * mean per-token loss` added (None: the default forward
    step), the number of times the term ran on this rank, and the first validation loss."""
    import torch

    from pap.config import config_from_dict
    from pap.forward_step import with_loss_term
    from pap.trainer import Trainer

    calls = []

    def term(batch, per_token_loss):
        calls.append(per_token_loss.shape)
        return scale * per_token_loss.float().mean() if scale else torch.zeros((), dtype=torch.float32)

    forward_step = None if scale is None else with_loss_term(term)
    trainer = Trainer(config_from_dict(cfg_dict), forward_step=forward_step)
    losses = [trainer.train_step().loss for _ in range(STEPS)]
    trainer.close()
    return {"losses": losses, "calls": len(calls)}


@pytest.mark.parametrize("pp", [1, 2])
def test_a_zero_loss_term_changes_nothing_and_a_real_one_trains(pp, random_dataset):
    cfg = tiny_config(random_dataset, parallel={"tp": 1, "pp": pp})
    world = pp
    plain = run_distributed(_losses_with_term, world, cfg, None)
    zero = run_distributed(_losses_with_term, world, cfg, 0.0)
    real = run_distributed(_losses_with_term, world, cfg, 0.5)
    micro_batches = cfg["train"]["global_batch_size"] // cfg["train"]["micro_batch_size"]
    last = world - 1
    assert zero[0]["losses"] == plain[0]["losses"]  # bit for bit
    assert zero[last]["calls"] == STEPS * micro_batches
    if pp == 2:
        assert zero[0]["calls"] == 0  # the first stage has no loss
    # The first step's logged loss is the next-token loss either way; then the training differs.
    assert real[0]["losses"][0] == plain[0]["losses"][0]
    assert real[0]["losses"][1:] != plain[0]["losses"][1:]
