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
                            capture_output=True, text=True, timeout=1800)
    checks = [line for line in result.stdout.splitlines() if line.startswith("CHECK ")]
    names = [line.split()[1] for line in checks]
    for expected in ("versions", "init_from", "natural_rounds_plain", "forced_distopt", "freed_distopt",
                     "resume_plain", "resume_distopt", "obs_rounds_plain", "obs_rounds_distopt", "adaptive_plain",
                     "adaptive_distopt", "greedy_plain", "greedy_distopt", "step_time"):
        assert expected in names, result.stdout[-3000:] + result.stderr[-3000:]
    # The distributed optimizer really splits its state: two data-parallel ranks.
    assert any(line.startswith("CHECK init_from PASS DP=2") for line in checks), checks
    failed = [line for line in checks if line.split()[2] != "PASS"]
    assert not failed and result.returncode == 0, "\n".join(failed) + result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == f"gpu_check: {len(checks)} passed, 0 failed"


def test_gpu_check_without_a_gpu_says_so():
    result = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "no GPU visible" in result.stderr


def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_time_fails_below_the_mfu_floor():
    verdict = _gpu_check().step_time_verdict
    assert verdict(True, 300.0, 989.0, 0.25, 2.0)[0]
    assert not verdict(True, 100.0, 989.0, 0.25, 2.0)[0]       # 10% MFU
    assert not verdict(True, 300.0, None, 0.25, 2.0)[0]        # no peak to judge against
    assert not verdict(False, 0.01, None, 0.25, float("nan"))[0]
    assert verdict(False, 0.01, None, 0.25, 2.0)[0]


def test_versions_fail_outside_the_supported_ranges(monkeypatch):
    import importlib.metadata as md

    gpu_check = _gpu_check()
    assert gpu_check.version_problems(False) == []
    real = md.version
    monkeypatch.setattr(md, "version", lambda name: "0.15.0" if name == "megatron-core" else real(name))
    assert any("megatron-core 0.15.0" in p for p in gpu_check.version_problems(False))
