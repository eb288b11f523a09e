"""The training state in its real dtype: bf16 weights with fp32 masters, both megatron optimizers,
FusedAdam-style step counts, the source model kept at step 1, old objects freed, no tensor
through an object collective."""

import pytest
import torch

from tests.distributed.state_workers import (live_training_objects, one_step_from_source,
                                             pruning_without_tensor_objects, round_keeps_training_state)
from tests.helpers import run_distributed, tiny_config

pytestmark = pytest.mark.slow

# (world size, parallel section): the plain bf16 optimizer (Float16OptimizerWithFloat16Params)
# at TP=1 and TP=2 (uneven shards after the round), the distributed optimizer at DP=2.
LAYOUTS = {"tp1": (1, {"tp": 1}), "tp2": (2, {"tp": 2}), "dp2_distopt": (2, {"tp": 1, "distributed_optimizer": True})}
# A head of every layer (one is the last of its KV group), an FFN channel, a hidden channel.
REMOVALS = {"attn": (1, 3, 0, 2), "ffn": (5, 127, 0, 64), "stem": (17,)}


def _config(prefix, parallel, dtype="bf16", **sections):
    cfg = tiny_config(prefix, parallel={"pp": 1, **parallel}, model={"params_dtype": dtype},
                      train={"iters": 10, "warmup_iters": 1, "eval_iters": 1})
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", sorted(REMOVALS))
def test_bf16_round_keeps_masters_moments_and_step_bit_exact(kind, layout, random_dataset):
    """After a round, the surviving fp32 masters and both Adam moments are bit-identical to
    before it, the bf16 weights are the masters' cast, Adam's step goes on, and training
    continues. (Today's main: a KeyError with the plain bf16 optimizer; masters rounded to
    bf16 with the distributed one.)"""
    world, parallel = LAYOUTS[layout]
    got = run_distributed(round_keeps_training_state, world, _config(random_dataset, parallel), kind, REMOVALS[kind])[0]
    assert got["optimizer"] == ["DistributedOptimizer" if "distopt" in layout else "Float16OptimizerWithFloat16Params"]
    for field in ("master", "exp_avg", "exp_avg_sq"):
        for name, value in got["expected"][field].items():
            assert value.dtype == torch.float32
            assert torch.equal(got["after"][field][name], value), f"{field} {name} changed in the round"
    assert got["expected"]["exp_avg_sq"]["decoder.layers.0.mlp.linear_fc2.weight"].abs().max() > 0
    for name, master in got["after"]["master"].items():
        param = got["after"]["param"][name]  # bf16 (the local spec keeps norm weights in fp32)
        assert torch.equal(param, master.to(param.dtype)), name
        assert param.dtype == torch.bfloat16 or name.endswith("norm.weight"), name
    # The masters really are finer than bf16 (else this test could not see them rounded).
    master = got["after"]["master"]["decoder.layers.0.mlp.linear_fc2.weight"]
    assert not torch.equal(master, master.to(torch.bfloat16).float())
    assert got["steps"] == (3.0, 3.0, 4.0)
    assert got["next_loss"] == got["next_loss"]  # not NaN


def test_fused_adam_step_in_param_groups_survives_a_round(random_dataset):
    """With a FusedAdam-style optimizer (step kept in param_groups, as on GPU) the step count
    is read and written there: 3 before the round, 3 after, 4 after the next step."""
    got = run_distributed(round_keeps_training_state, 1, _config(random_dataset, {"tp": 1}), "ffn",
                          REMOVALS["ffn"], True)[0]
    assert got["inner"] == "ParamGroupStepAdam"
    assert got["group_steps"] == [3], "the param groups carry the step through the round"
    assert got["steps"] == (3.0, 3.0, 4.0)
    for field in ("master", "exp_avg", "exp_avg_sq"):
        for name, value in got["expected"][field].items():
            assert torch.equal(got["after"][field][name], value), f"{field} {name}"


@pytest.fixture(scope="module")
def source_checkpoint(random_dataset, tmp_path_factory):
    """A weights-only fp32 checkpoint of the tiny shape, drawn with another seed than the runs'."""
    from tests.hf.workers import make_checkpoint

    out = tmp_path_factory.mktemp("source") / "ckpt"
    cfg = _config(random_dataset, {"tp": 1}, dtype="fp32")
    from pap.arch import Arch
    from pap.config import config_from_dict

    arch = Arch.from_model_config(config_from_dict(cfg).model)
    run_distributed(make_checkpoint, 1, arch.to_json(), str(out), 11)
    return str(out)


@pytest.mark.parametrize("world,parallel", [(1, {"tp": 1}), (2, {"tp": 1, "distributed_optimizer": True})],
                         ids=["plain", "dp2_distopt"])
def test_init_from_weights_survive_the_first_step(world, parallel, random_dataset, source_checkpoint):
    """bf16 from an fp32 source: masters start at the source exactly and move by about lr in one
    step (Adam's first update is ±lr per entry, plus lr * weight decay * w). Today's main leaves
    the distributed optimizer's masters at the random init, and the first step copies it back."""
    cfg = _config(random_dataset, parallel, checkpoint={"init_from": source_checkpoint},
                  train={"lr": 1e-4, "min_lr": 1e-5, "warmup_iters": 0, "iters": 10, "eval_iters": 1})
    cfg["model"]["init_std"] = 0.2  # the source's (make_checkpoint)
    got = run_distributed(one_step_from_source, world, cfg)[0]
    lr = got["lr"]
    assert lr > 0
    for name, master in got["before"]["master"].items():
        assert torch.equal(got["before"]["param"][name], master.to(torch.bfloat16)), name
        moved = (got["after"]["master"][name] - master).abs().max().item()
        assert moved <= 1.2 * lr, f"{name} moved {moved:.2e} from the source in one step (lr {lr:.1e})"
        assert moved > 0, f"{name} did not train"


def test_fp32_source_masters_are_exact(random_dataset, source_checkpoint):
    """The masters of a bf16 run started from an fp32 checkpoint hold the fp32 source values,
    not their bf16 rounding."""
    cfg = _config(random_dataset, {"tp": 1, "distributed_optimizer": True},
                  checkpoint={"init_from": source_checkpoint})
    got = run_distributed(one_step_from_source, 1, cfg)[0]
    reference = run_distributed(one_step_from_source, 1,
                                _config(random_dataset, {"tp": 1}, dtype="fp32",
                                        checkpoint={"init_from": source_checkpoint}))[0]
    for name, value in reference["before"]["param"].items():
        assert torch.equal(got["before"]["master"][name], value), name


def _leak_config(prefix, distopt, checkpoint_dir=None, init_from=None):
    cfg = tiny_config(prefix, model={"hidden_size": 256, "num_layers": 2, "num_attention_heads": 4,
                                     "num_query_groups": 2, "ffn_hidden_size": 1024},
                      parallel={"tp": 1, "pp": 1, "distributed_optimizer": distopt},
                      train={"iters": 100, "warmup_iters": 1, "eval_iters": 0},
                      checkpoint={"dir": checkpoint_dir, "init_from": init_from})
    if init_from is None:
        cfg["prune"] = {"enabled": True, "target_params": 0.3, "grad_steps": 1, "prune_steps": 1, "metric": "first"}
    return cfg


@pytest.mark.parametrize("distopt", [False, True], ids=["plain", "distopt"])
def test_rounds_free_the_old_model_ddp_and_optimizer(distopt, random_dataset, tmp_path):
    """After 20 rounds one model, DDP wrapper and optimizer are alive, and the process's RSS is
    close to that of a fresh trainer of the final shape (today's main keeps every round's)."""
    pruned = run_distributed(live_training_objects, 1, _leak_config(random_dataset, distopt, str(tmp_path / "run")), 20)[0]
    assert pruned["removals"] >= 20
    fresh = run_distributed(live_training_objects, 1,
                            _leak_config(random_dataset, distopt, init_from=str(tmp_path / "run")), 0)[0]
    assert fresh["arch"] == pruned["arch"]
    # (megatron wraps its optimizer in a ChainedOptimizer: two MegatronOptimizer objects per trainer)
    assert fresh["live"]["DistributedDataParallel"] == 1 and fresh["live"]["GPTModel"] == 1
    assert pruned["live"] == fresh["live"], (pruned["live"], fresh["live"])
    # One round's state of this 2.1M-parameter model is ~40 MB (weights, grads, masters,
    # moments, gathered copies): 20 leaked rounds would add ~0.8 GB.
    assert pruned["rss"] <= fresh["rss"] * 1.15 + 64e6, (pruned["rss"] / 1e6, fresh["rss"] / 1e6)


@pytest.mark.parametrize("world,parallel", [(2, {"tp": 2, "pp": 1}), (2, {"tp": 1, "pp": 2}),
                                            (2, {"tp": 1, "pp": 1, "distributed_optimizer": True})],
                         ids=["tp2", "pp2", "dp2_distopt"])
def test_no_tensor_travels_through_an_object_collective(world, parallel, random_dataset):
    """Saliency reduction, pruning rounds and their gathers use tensor collectives (NCCL on GPU;
    an object collective returns tensors on the sender's device): object collectives carry
    small Python objects only."""
    cfg = tiny_config(random_dataset, parallel=parallel, train={"iters": 10, "warmup_iters": 1},
                      prune={"enabled": True, "target_params": 0.5, "grad_steps": 1, "prune_steps": 1,
                             "min_ffn": 127, "min_hidden": 63, "min_heads": 3, "min_kv_heads": 2})
    results = run_distributed(pruning_without_tensor_objects, world, cfg, 4)
    assert {kind for kind, _ in results[0]["removals"]} >= {"ffn", "stem"}
    for rank, result in enumerate(results):
        assert not result["offending"], f"rank {rank}:\n" + "\n".join(result["offending"][:2])


def test_scores_mask_follows_the_scores_device():
    """The head mask of `choose` is made on the scores' device (a CPU mask on GPU scores crashed)."""
    from pap.pruning.select import _removable_heads

    assert _removable_heads([2, 1], 1, torch.device("meta")).device.type == "meta"
    scores = torch.zeros(3, device="meta")
    scores.masked_fill(~_removable_heads([2, 1], 1, scores.device), float("inf"))  # no device error

