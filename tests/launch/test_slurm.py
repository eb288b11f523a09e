"""`sbatch launch/pap_469m.sh` on a real one-node Slurm, with the tiny model on CPU.

The very script users submit runs here; environment overrides select a tiny pruning
config, 2 gloo processes on the one node, and no GPUs (`--gpus-per-node=0` on the sbatch
command line beats the script's `#SBATCH --gpus-per-node=8`). Slurm is installed from the
OS packages when missing; the tests skip, saying why, only where that is impossible.
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import yaml

from tests.helpers import tiny_config
from tests.integration.test_train_cli import step_losses
from tests.launch.slurm_cluster import SlurmCluster

REPO = Path(__file__).resolve().parents[2]
ITERS = 40
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    reason = slurm.unavailable()
    if reason:
        pytest.skip(f"Slurm cannot be installed here: {reason}")
    slurm.start()
    yield slurm
    slurm.stop()


@pytest.fixture(scope="module")
def job_config(tmp_path_factory, random_dataset):
    """A tiny pruning run at TP=2: 40 steps, 4 removals every 2 steps until 80%."""
    cfg = tiny_config(random_dataset, parallel={"tp": 2, "pp": 1},
                      train={"iters": ITERS, "warmup_iters": 2, "eval_iters": 1, "eval_interval": 0},
                      log={"interval": 5}, checkpoint={"save_interval": 10},
                      prune={"enabled": True, "target_params": 0.8, "grad_steps": 2, "prune_steps": 4,
                             "min_kv_heads": 2, "min_ffn": 2})
    path = tmp_path_factory.mktemp("config") / "tiny_pap.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def submit(cluster, config: Path, exp_dir: Path, *sbatch_args: str, check: bool = True,
           env: Optional[dict] = None) -> str:
    """sbatch the user's script with CPU overrides (and `env`); returns the job id."""
    env = {"PAP_HOME": str(REPO), "PAP_CONFIG": str(config), "EXP_DIR": str(exp_dir), "GPUS_PER_NODE": "2",
           "PAP_PYTHON": sys.executable, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **(env or {})}
    done = cluster.run("sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", "--time=20",
                       f"--output={exp_dir.parent}/{exp_dir.name}-%j.out", *sbatch_args,
                       str(REPO / "launch" / "pap_469m.sh"), env=env, check=check)
    return done.stdout.strip().split(";")[0]


def events(exp_dir: Path) -> list:
    return [(e["iteration"], e["kind"], e["indices"])
            for e in map(json.loads, (exp_dir / "pruning_events.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def uninterrupted(cluster, job_config, tmp_path_factory):
    exp_dir = tmp_path_factory.mktemp("jobs") / "uninterrupted"
    job = submit(cluster, job_config, exp_dir, "--wait")
    return job, exp_dir


def test_sbatch_trains_prunes_and_checkpoints(cluster, job_config, uninterrupted):
    from pap.arch import Arch
    from pap.config import load_config

    job, exp_dir = uninterrupted
    output = (exp_dir.parent / f"uninterrupted-{job}.out").read_text()
    assert cluster.job_field(job, "JobState") in ("COMPLETED", ""), output[-3000:]
    losses = step_losses(exp_dir / "metrics.jsonl")
    assert sorted(losses) == list(range(1, ITERS + 1)), output[-3000:]
    assert sum(losses[i] for i in range(31, 41)) < sum(losses[i] for i in range(1, 11))  # the loss falls
    removals = events(exp_dir)
    assert removals, output[-3000:]
    state = json.loads((exp_dir / f"iter_{ITERS:07d}" / "pap_state.json").read_text())
    assert "pap: pruning target reached" in output and (exp_dir / "pruned").is_symlink()
    assert (exp_dir / "latest_checkpointed_iteration.txt").read_text().strip() == str(ITERS)
    source = Arch.from_model_config(load_config(str(job_config)).model).num_params()
    assert Arch.from_json(json.dumps(state["arch"])).num_params() <= 0.8 * source < source
    record = next((exp_dir / "launches").iterdir())
    for name in ("job-script.sh", "common.sh", "config.yaml", "command.txt", "env.txt", "pip-freeze.txt",
                 "git-sha.txt", "nvidia-smi.txt"):
        assert (record / name).is_file(), name
    assert "--nnodes 1 --nproc-per-node 2" in (record / "command.txt").read_text()
    assert yaml.safe_load((record / "config.yaml").read_text())["checkpoint"]["dir"] == str(exp_dir)


def test_usr1_checkpoints_requeues_and_finishes_with_the_same_removals(cluster, job_config, uninterrupted,
                                                                       tmp_path):
    exp_dir = tmp_path / "preempted"
    job = submit(cluster, job_config, exp_dir)
    metrics = exp_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 12):
        time.sleep(0.2)
    assert metrics.exists(), "the job did not start training"
    cluster.run("scancel", "--signal=USR1", "--batch", job)
    # The job checkpoints, requeues itself, runs again and completes.
    deadline = time.time() + 600
    while time.time() < deadline and cluster.job_field(job, "JobState") not in ("COMPLETED", "FAILED", "CANCELLED"):
        time.sleep(1)
    output = (tmp_path / f"preempted-{job}.out").read_text()
    assert cluster.job_field(job, "JobState") == "COMPLETED", output[-3000:]
    assert cluster.job_field(job, "Restarts") == "1", output[-3000:]
    assert "requeueing job" in output and "pap: exit requested: stopped at iteration" in output
    stopped = int(output.split("pap: exit requested: stopped at iteration ")[1].split(",")[0])
    assert 12 <= stopped < ITERS and f"resumed from {exp_dir}/iter_{stopped:07d}" in output
    assert not (exp_dir / "exit_requested").exists()
    assert events(exp_dir) == events(uninterrupted[1])
    reference, resumed = step_losses(uninterrupted[1] / "metrics.jsonl"), step_losses(metrics)
    for iteration in range(1, ITERS + 1):
        assert resumed[iteration] == pytest.approx(reference[iteration], abs=1e-5), iteration


def test_a_failed_job_ends_with_its_first_error_line(cluster, job_config, tmp_path):
    """A run that stops on bad input: torchrun's long failure report is followed by one line
    with pap's first `error:` line and where the log is."""
    cfg = yaml.safe_load(job_config.read_text())
    cfg["data"]["blend"] = [str(tmp_path / "missing_text_document")]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    job = submit(cluster, bad, tmp_path / "failed", "--wait", check=False)
    output = (tmp_path / f"failed-{job}.out").read_text()
    last = output.strip().splitlines()[-1]
    assert last.startswith("pap launch: training failed with status "), output[-3000:]
    assert f"first error: data.blend: dataset prefix '{tmp_path / 'missing_text_document'}' not found" in last


STAND_IN_SRUN = """#!/bin/bash
# Stands in for pyxis: records each srun's arguments and the socket variables it sees,
# drops the container options (this Slurm has no pyxis) and runs the real srun.
{{ printf '%s\\n' "$*"; echo "GLOO_SOCKET_IFNAME=$GLOO_SOCKET_IFNAME NCCL_SOCKET_IFNAME=$NCCL_SOCKET_IFNAME"; }} >> {log}
args=()
for arg in "$@"; do
  case "$arg" in --container-*) ;; *) args+=("$arg") ;; esac
done
exec {srun} "${{args[@]}}"
"""


def test_pap_container_runs_every_step_through_srun_in_the_image(cluster, job_config, uninterrupted, tmp_path):
    """With PAP_CONTAINER (and PAP_SOCKET_IFNAME) set, the config record, pip freeze,
    nvidia-smi and training each go through `srun --container-image ... --container-mounts
    ... --container-workdir`, with the socket variables exported; the run itself is the
    uninterrupted run, loss for loss."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "srun-calls.txt"
    real_srun = shutil.which("srun", path=cluster.env.get("PATH", os.environ["PATH"]))
    (bin_dir / "srun").write_text(STAND_IN_SRUN.format(log=calls, srun=real_srun))
    (bin_dir / "srun").chmod(0o755)
    exp_dir = tmp_path / "contained"
    path = f"{bin_dir}:{cluster.env.get('PATH', os.environ['PATH'])}"
    job = submit(cluster, job_config, exp_dir, "--wait",
                 env={"PATH": path, "PAP_CONTAINER": "/images/pap.sqsh", "PAP_SOCKET_IFNAME": "lo"})
    output = (tmp_path / f"contained-{job}.out").read_text()
    assert cluster.job_field(job, "JobState") in ("COMPLETED", ""), output[-3000:]
    recorded = calls.read_text().splitlines()
    commands, sockets = recorded[0::2], recorded[1::2]
    assert len(commands) == 4, recorded  # config, pip freeze, nvidia-smi, training
    expected = (f"--container-image=/images/pap.sqsh --container-mounts={REPO}:{REPO},{exp_dir}:{exp_dir} "
                f"--container-workdir={REPO}")
    for command in commands:
        assert expected in command, command
    assert "--print-config" in commands[0] and "pip freeze" in commands[1] and "nvidia-smi" in commands[2]
    assert "--nodes=1 --ntasks-per-node=1 --kill-on-bad-exit=1" in commands[3] and "-m pap.train" in commands[3]
    assert set(sockets) == {"GLOO_SOCKET_IFNAME=lo NCCL_SOCKET_IFNAME=lo"}
    record = next((exp_dir / "launches").iterdir())
    assert yaml.safe_load((record / "config.yaml").read_text())["checkpoint"]["dir"] == str(exp_dir)
    assert "--container-image=/images/pap.sqsh" in (record / "command.txt").read_text()
    reference, contained = step_losses(uninterrupted[1] / "metrics.jsonl"), step_losses(exp_dir / "metrics.jsonl")
    assert sorted(contained) == sorted(reference)
    for iteration, loss in reference.items():
        assert contained[iteration] == pytest.approx(loss, abs=1e-5), iteration
