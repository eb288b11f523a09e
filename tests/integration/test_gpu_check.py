"""`bench/gpu_check.py` (make gpu-check) runs its checks end to end at toy scale on CPU, so the
script a GPU machine runs is known to work before a GPU is at hand."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_passes_on_cpu():
    result = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu"], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    checks = [line for line in result.stdout.splitlines() if line.startswith("CHECK ")]
    names = [line.split()[1] for line in checks]
    for expected in ("versions", "init_from", "natural_rounds_plain", "forced_distopt", "freed_distopt",
                     "resume_plain", "resume_distopt", "step_time"):
        assert expected in names, result.stdout[-3000:] + result.stderr[-3000:]
    failed = [line for line in checks if line.split()[2] != "PASS"]
    assert not failed and result.returncode == 0, "\n".join(failed) + result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == f"gpu_check: {len(checks)} passed, 0 failed"


def test_gpu_check_without_a_gpu_says_so():
    result = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "no GPU visible" in result.stderr
