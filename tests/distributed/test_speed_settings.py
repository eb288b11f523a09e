"""Megatron's speed settings reach the objects megatron builds, and change nothing but speed:
overlapped gradient reduction and parameter gathering (DP=2, distributed optimizer, small
buckets), data loader workers and activation recomputation give the losses, removals and
weights of the plain run, across pruning rounds."""

import pytest
import torch

from tests.distributed.speed_workers import built_settings_and_losses
from tests.helpers import run_distributed, tiny_config

pytestmark = pytest.mark.slow
STEPS = 5
PRUNE = {"enabled": True, "target_params": 0.5, "grad_steps": 2, "prune_steps": 2, "metric": "first"}
FAST = {"overlap_grad_reduce": True, "overlap_param_gather": True, "bucket_size": 4000}


def _run(prefix, world, parallel, model=None, prune=PRUNE, data=None):
    cfg = tiny_config(prefix, parallel={"tp": 1, "pp": 1, "distributed_optimizer": True, **parallel},
                      model=model or {}, train={"iters": 10, "warmup_iters": 1}, prune=prune)
    cfg["data"].update(data or {})
    return run_distributed(built_settings_and_losses, world, cfg, STEPS)[0]


def _same_run(got, reference):
    assert got["removals"] == reference["removals"] and got["removals"]
    for a, b in zip(got["losses"], reference["losses"]):
        assert abs(a - b) <= 1e-6, (got["losses"], reference["losses"])
    for name, value in reference["params"].items():
        assert torch.allclose(got["params"][name], value, rtol=0, atol=1e-6), name


def test_overlapped_reduce_and_gather_match_the_plain_run_across_rounds(random_dataset):
    plain = _run(random_dataset, 2, {})
    fast = _run(random_dataset, 2, FAST)
    built = fast["built"]
    assert built["overlap_grad_reduce"] and built["overlap_param_gather"] and built["forward_pre_hooks"]
    assert built["bucket_size"] == 4000 and built["buckets"] > 1
    assert not plain["built"]["overlap_grad_reduce"] and plain["built"]["buckets"] == 1
    _same_run(fast, plain)


def test_data_loader_workers_keep_the_losses(random_dataset):
    plain = _run(random_dataset, 2, {})
    _same_run(_run(random_dataset, 2, {}, data={"num_workers": 2, "prefetch_factor": 2}), plain)


@pytest.mark.parametrize("recompute", [{"recompute": "selective"},
                                       {"recompute": "full", "recompute_num_layers": 2}], ids=["selective", "full"])
def test_recomputation_reaches_megatron_and_keeps_the_losses(recompute, random_dataset):
    plain = _run(random_dataset, 1, {"distributed_optimizer": False})
    got = _run(random_dataset, 1, {"distributed_optimizer": False}, model=recompute)
    built = got["built"]
    assert built["recompute_granularity"] == recompute["recompute"]
    if recompute["recompute"] == "full":
        assert built["recompute_method"] == "uniform" and built["recompute_num_layers"] == 2
    _same_run(got, plain)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_gpu_only_fusions_are_off_on_cpu_and_said_so(random_dataset):
    from pap.config import config_from_dict
    from pap.model import fusions_off_without_gpu

    fusions = {"gradient_accumulation_fusion": True, "rope_fusion": True, "swiglu_fusion": True}
    cfg = config_from_dict(tiny_config(random_dataset, model=fusions))
    assert fusions_off_without_gpu(cfg) == list(fusions)
    got = _run(random_dataset, 1, {"distributed_optimizer": False}, model=fusions, prune={"enabled": False})
    assert not any(got["built"][key] for key in ("gradient_accumulation_fusion", "apply_rope_fusion",
                                                  "bias_activation_fusion"))
