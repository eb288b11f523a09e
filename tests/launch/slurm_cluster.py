"""A real one-node Slurm cluster on loopback, for running the launch scripts under sbatch.

`SlurmCluster(workdir)` installs Slurm and munge from the OS packages when they are
missing (root and apt-get needed; otherwise `unavailable()` says why), starts munged,
slurmctld and slurmd with a config of its own (SLURM_CONF points every client at it,
nothing under /etc/slurm is touched) and stops the daemons on `stop()`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

PACKAGES = ("slurm-wlm", "munge")


def apt_install(*packages: str, timeout: int = 900) -> Optional[str]:
    """Install OS packages with apt-get; returns why not, or None when done."""
    if os.geteuid() != 0:
        return "not root, cannot install OS packages"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            return f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-300:]}"
    return None


class SlurmCluster:
    """slurmctld + slurmd on this machine, configured under `workdir`."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.conf = self.workdir / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def unavailable(self) -> Optional[str]:
        """Install what is missing; the reason Slurm cannot run here, or None."""
        if shutil.which("slurmctld") and shutil.which("munged"):
            return None
        return apt_install(*PACKAGES)

    def start(self) -> None:
        self._start_munge()
        for name in ("state", "spool", "log"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        w = self.workdir
        self.conf.write_text(f"""ClusterName=paptest
SlurmctldHost={self.host}(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={w}/state
SlurmdSpoolDir={w}/spool
SlurmctldPidFile={w}/slurmctld.pid
SlurmdPidFile={w}/slurmd.pid
SlurmctldLogFile={w}/log/slurmctld.log
SlurmdLogFile={w}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
KillWait=10
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
""")
        self.stop()  # daemons left over from an interrupted session
        subprocess.run(["slurmctld", "-c", "-f", str(self.conf)], env=self.env, check=True)
        time.sleep(2)
        subprocess.run(["slurmd", "-f", str(self.conf)], env=self.env, check=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(1)
        raise RuntimeError(f"slurm did not come up (sinfo: {state!r}); logs in {w}/log")

    def _start_munge(self) -> None:
        probe = subprocess.run("munge -n | unmunge", shell=True, capture_output=True)
        if probe.returncode == 0:
            return
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        subprocess.run(["munged", "--force"], check=True)
        time.sleep(1)

    def run(self, *cmd: str, check: bool = True, env: Optional[dict] = None, timeout: int = 900):
        """Run a Slurm client command against this cluster."""
        return subprocess.run(list(cmd), env={**self.env, **(env or {})}, capture_output=True, text=True,
                              check=check, timeout=timeout)

    def job_field(self, job_id: str, field: str) -> str:
        """One `scontrol show job` field (e.g. JobState, Restarts), '' once the job is forgotten."""
        out = self.run("scontrol", "show", "job", job_id, check=False).stdout
        for item in out.split():
            if item.startswith(field + "="):
                return item.split("=", 1)[1]
        return ""

    def stop(self) -> None:
        """Cancel every job and stop both daemons (by their pid files)."""
        if self.conf.exists():
            self.run("scancel", "--full", "-u", "root", check=False)
        for name in ("slurmd.pid", "slurmctld.pid"):
            pid_file = self.workdir / name
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), 15)
                except (ProcessLookupError, ValueError):
                    pass
                pid_file.unlink(missing_ok=True)
        time.sleep(1)
