"""The launch scripts without Slurm: dry run, bad input, shellcheck, two-node rendezvous."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import free_port, tiny_config
from tests.integration.test_train_cli import step_losses, write_config
from tests.launch.slurm_cluster import apt_install

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "launch").glob("*.sh"))


def dry_run(script: str, **env):
    return subprocess.run(["bash", str(REPO / "launch" / script)], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PAP_DRY_RUN": "1", "PAP_PYTHON": sys.executable, **env})


@pytest.mark.parametrize("script, recipe", [("pap_134m.sh", "pap_134m"), ("pap_469m.sh", "pap_469m"),
                                            ("pap_1.1b.sh", "pap_1.1b")])
def test_dry_run_prints_the_recipe_command_and_config(script, recipe):
    done = dry_run(script)
    assert done.returncode == 0, done.stderr
    command = done.stdout.split("# resolved config:")[0]
    assert f"--config configs/recipes/{recipe}.yaml" in command
    assert "--nnodes 1 --nproc-per-node 8 --rdzv-id local --rdzv-backend c10d --rdzv-endpoint localhost:" in command
    config = yaml.safe_load(done.stdout.split("# resolved config:\n")[1])
    assert config["checkpoint"]["dir"] == f"runs/{recipe}" and config["prune"]["enabled"]
    assert config["train"]["exit_file"] == f"runs/{recipe}/exit_requested"


def test_environment_overrides_reach_the_config(tmp_path):
    blend = tmp_path / "mix.args"
    blend.write_text("0.25 data/a_text_document 0.75 data/b_text_document\n")
    done = dry_run("pap_469m.sh", EXP_DIR=str(tmp_path / "exp"), TP="1", PP="2", GPUS_PER_NODE="4",
                   SOURCE_CKPT="ckpt/other", DATA_BLEND=str(blend), PAP_OVERRIDES="train.iters=10000 log.interval=1",
                   SLURM_NNODES="4", MASTER_PORT="31000")
    assert done.returncode == 0, done.stderr
    assert "--nnodes 4 --nproc-per-node 4" in done.stdout and "localhost:31000" in done.stdout
    config = yaml.safe_load(done.stdout.split("# resolved config:\n")[1])
    assert config["parallel"] == {**config["parallel"], "tp": 1, "pp": 2}
    assert config["checkpoint"]["dir"] == str(tmp_path / "exp")
    assert config["checkpoint"]["init_from"] == "ckpt/other"
    assert config["data"]["blend"] == ["0.25", "data/a_text_document", "0.75", "data/b_text_document"]
    assert config["train"]["iters"] == 10000 and config["log"]["interval"] == 1


def test_container_and_socket_settings_reach_the_srun_line(tmp_path):
    done = dry_run("pap_469m.sh", PAP_CONTAINER="/images/pap.sqsh", PAP_HOME=str(REPO),
                   EXP_DIR=str(tmp_path / "exp"), PAP_CONTAINER_MOUNTS="/data:/data", PAP_SOCKET_IFNAME="ib0",
                   NCCL_SOCKET_IFNAME="ib1")
    assert done.returncode == 0, done.stderr
    command = done.stdout.split("# resolved config:")[0].replace("\\,", ",")  # printf %q escapes commas
    assert (f"--container-image=/images/pap.sqsh --container-mounts={REPO}:{REPO},{tmp_path / 'exp'}:"
            f"{tmp_path / 'exp'},/data:/data --container-workdir={REPO}") in command
    assert "# GLOO_SOCKET_IFNAME=ib0" in command and "# NCCL_SOCKET_IFNAME=ib1" in command  # set ones win
    plain = dry_run("pap_469m.sh").stdout.split("# resolved config:")[0]
    assert "--container" not in plain and "SOCKET_IFNAME" not in plain


def test_bad_settings_fail_before_launch(tmp_path):
    done = dry_run("pap_469m.sh", DATA_BLEND=str(tmp_path / "missing.args"))
    assert done.returncode == 2 and "DATA_BLEND" in done.stderr and "no such file" in done.stderr
    done = dry_run("pap_469m.sh", TP="3")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "parallel.tp" in done.stderr


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        reason = apt_install("shellcheck")
        if reason:
            pytest.skip(f"shellcheck cannot be installed here: {reason}")
    done = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout


@pytest.mark.slow
def test_two_nodes_rendezvous_and_train_together(tmp_path, random_dataset):
    """Two torchrun agents (--nnodes 2, one process each) meet through c10d on loopback and
    run one TP=2 pruning job across the two "nodes"; it matches a one-node TP=2 run."""
    cfg = tiny_config(random_dataset, parallel={"tp": 2, "pp": 1}, train={"iters": 6, "eval_iters": 0},
                      prune={"enabled": True, "target_params": 0.9, "prune_steps": 2, "min_kv_heads": 2,
                             "min_ffn": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def torchrun(nnodes, nproc, run_dir, port):
        config = write_config(tmp_path / f"{run_dir.name}.yaml", {**cfg, "checkpoint": {"dir": str(run_dir)}})
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node",
                str(nproc), "--rdzv-id", run_dir.name, "--rdzv-backend", "c10d", "--rdzv-endpoint",
                f"127.0.0.1:{port}", "-m", "pap.train", "--config", config]

    port = free_port()
    nodes = [subprocess.Popen(torchrun(2, 1, tmp_path / "two_nodes", port), env=env, cwd=REPO,
                              stdout=open(tmp_path / f"node{i}.log", "w"), stderr=subprocess.STDOUT)
             for i in range(2)]
    for i, node in enumerate(nodes):
        assert node.wait(timeout=600) == 0, (tmp_path / f"node{i}.log").read_text()[-3000:]
    one = subprocess.run(torchrun(1, 2, tmp_path / "one_node", free_port()), env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout[-3000:]
    logs = "".join((tmp_path / f"node{i}.log").read_text() for i in range(2))
    assert "tp=2 pp=1 dp=1" in logs

    def removals(run_dir):
        return [json.loads(l)["indices"] for l in (run_dir / "pruning_events.jsonl").read_text().splitlines()]

    assert removals(tmp_path / "two_nodes") == removals(tmp_path / "one_node") != []
    two, single = step_losses(tmp_path / "two_nodes" / "metrics.jsonl"), step_losses(tmp_path / "one_node" / "metrics.jsonl")
    assert two == pytest.approx(single, abs=1e-6)
