"""`pap.baselines`: one-shot pruning of a trained checkpoint, and fresh weights of an Arch."""

import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import tiny_config
from tests.integration.test_train_cli import REPO, run, step_losses, write_config


def baselines(*args):
    done = subprocess.run([sys.executable, "-m", "pap.baselines", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def arch_of(ckpt):
    from pap import checkpoint

    return checkpoint.read(str(ckpt)).arch


@pytest.mark.slow
def test_oneshot_then_scratch_then_training(tmp_path, random_dataset):
    from pap.arch import Arch
    from pap.config import config_from_dict

    cfg = tiny_config(random_dataset, train={"iters": 4, "eval_iters": 1}, checkpoint={"dir": str(tmp_path / "src")})
    config = write_config(tmp_path / "c.yaml", cfg)
    run(1, config, log=tmp_path / "src.log")
    source = Arch.from_model_config(config_from_dict(cfg).model).num_params()

    out = baselines("oneshot", "--config", config, "--source", str(tmp_path / "src"), "--target", "0.7",
                    "--calib-batches", "2", "--out", str(tmp_path / "oneshot"))
    pruned = arch_of(tmp_path / "oneshot")
    assert pruned.num_params() <= 0.7 * source < source
    assert f"-> {pruned.num_params():,} parameters" in out
    before, after = (float(x) for x in out.split("validation loss ")[1].replace(" before,", "").split(" after")[0].split())
    assert after > before  # removing a third of a trained model costs loss

    baselines("scratch", "--config", config, "--arch-from", str(tmp_path / "oneshot"), "--out", str(tmp_path / "new"))
    assert arch_of(tmp_path / "new") == pruned
    from pap import checkpoint

    assert checkpoint.read(str(tmp_path / "new")).model_only

    # Both start a run through checkpoint.init_from, in the pruned shape.
    for name in ("oneshot", "new"):
        cfg_run = tiny_config(random_dataset, train={"iters": 2, "eval_iters": 0},
                              checkpoint={"dir": str(tmp_path / f"run_{name}"), "init_from": str(tmp_path / name)})
        log = run(1, write_config(tmp_path / f"{name}.yaml", cfg_run), log=tmp_path / f"{name}.log")
        assert f"pap: {pruned.num_params():,} parameters" in log
        losses = step_losses(tmp_path / f"run_{name}" / "metrics.jsonl")
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    first = {n: step_losses(tmp_path / f"run_{n}" / "metrics.jsonl")[1] for n in ("oneshot", "new")}
    assert first["oneshot"] < first["new"]  # the one-shot model keeps some of what the source learned
