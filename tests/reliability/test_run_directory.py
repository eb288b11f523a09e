"""Runs and their directories survive what users and machines do to them: a second run on
the same directory, kills at chosen moments (`pap.fault_injection`, no sleeps), damaged
checkpoints and caches, a config changed under a resumed run. docs/RELIABILITY.md lists
every case with the test that covers it."""

import json
import subprocess
import sys
import time

from tests.helpers import tiny_config
from tests.integration.test_train_cli import REPO, kill_tree, launch, run, step_losses, write_config


def test_one_run_per_checkpoint_dir(tmp_path, random_dataset):
    """A second run on a directory in use stops at start with one line naming the holder and
    touches nothing; once the holder is killed (SIGKILL: no clean release), the next run takes
    the lock over with a message, and a finished run leaves the lock released. (Before, two
    runs on one directory interleaved their checkpoints and logs silently.)"""
    run_dir = tmp_path / "run"
    cfg = tiny_config(random_dataset, train={"iters": 100000, "eval_iters": 0},
                      checkpoint={"dir": str(run_dir), "save_interval": 0, "save_at_end": False})
    holder = launch(1, write_config(tmp_path / "long.yaml", cfg), log=tmp_path / "holder.log")
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.time() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1) and time.time() < deadline:
            time.sleep(0.05)
        cfg["train"]["iters"] = 2
        short = write_config(tmp_path / "short.yaml", cfg)
        before = metrics.read_text()
        result = subprocess.run([sys.executable, "-m", "pap.train", "--config", short], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        lines = [l for l in (result.stdout + result.stderr).splitlines() if l.strip()]
        assert result.returncode == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: checkpoint.dir {run_dir} is in use by pid ") and "pap.lock" in lines[0]
        assert metrics.read_text().startswith(before)
    finally:
        kill_tree(holder)
    out = run(1, short, log=tmp_path / "after.log")
    assert "ended without releasing it; taking the lock over" in out
    assert (run_dir / "pap.lock").read_text() == ""  # released at the end of the run
    out = run(1, short, log=tmp_path / "again.log")
    assert "taking the lock over" not in out


def test_damaged_checkpoint_is_named_and_fallback_resumes_from_the_previous(tmp_path, random_dataset):
    """Every checkpoint carries a size and CRC-32 per file. A newest checkpoint with a flipped
    byte stops the resume with one line naming the file; with checkpoint.fallback=true the
    run resumes from the previous complete checkpoint and trains to the end."""
    run_dir = tmp_path / "run"
    cfg = tiny_config(random_dataset, train={"iters": 4, "warmup_iters": 1, "eval_iters": 0},
                      checkpoint={"dir": str(run_dir), "save_interval": 2})
    config = write_config(tmp_path / "c.yaml", cfg)
    run(1, config, log=tmp_path / "first.log")
    table = json.loads((run_dir / "iter_0000004" / "checksums.json").read_text())
    assert any(name.endswith(".distcp") for name in table)
    victim = next((run_dir / "iter_0000004").glob("*.distcp"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    config = write_config(tmp_path / "more.yaml", {**cfg, "train": {**cfg["train"], "iters": 6}})
    result = subprocess.run([sys.executable, "-m", "pap.train", "--config", config], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    lines = [l for l in (result.stdout + result.stderr).splitlines() if l.strip()]
    assert result.returncode == 2 and len(lines) == 1, lines
    assert str(victim) in lines[0] and "checkpoint.fallback=true" in lines[0] and "iter_0000002" in lines[0]
    out = run(1, config, "checkpoint.fallback=true", log=tmp_path / "fallback.log")
    assert "falling back to an older checkpoint" in out and "resumed from" in out and "at iteration 2" in out
    assert sorted(step_losses(run_dir / "metrics.jsonl")) == list(range(1, 7))


def test_resume_with_another_model_shape_or_a_damaged_data_cache_is_refused(tmp_path, random_dataset):
    """A config whose model section changed since the checkpoint: one line, nothing written
    (before, the checkpoint's shape was used without a word). A truncated data-cache index:
    one line naming it (before, a traceback on every restart)."""
    run_dir = tmp_path / "run"
    cfg = tiny_config(random_dataset, train={"iters": 1, "warmup_iters": 0, "eval_iters": 0},
                      checkpoint={"dir": str(run_dir)})
    config = write_config(tmp_path / "c.yaml", cfg)
    run(1, config, log=tmp_path / "first.log")
    before = sorted(p.name for p in run_dir.iterdir())
    result = subprocess.run([sys.executable, "-m", "pap.train", "--config", config, "model.hidden_size=96",
                             "train.iters=2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [l for l in (result.stdout + result.stderr).splitlines() if l.strip()]
    assert result.returncode == 2 and len(lines) == 1, lines
    assert "model.hidden_size=64" in lines[0] and "says 96" in lines[0]
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert (run_dir / "pap.lock").read_text() == "", "a refused start must leave the lock released"
    # A data-cache index cut short (a kill while megatron wrote it): one line naming it.
    victim = next((run_dir / "data_cache").rglob("*.npy"))
    victim.write_bytes(victim.read_bytes()[:-8])
    result = subprocess.run([sys.executable, "-m", "pap.train", "--config", config, "train.iters=2"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    lines = [l for l in (result.stdout + result.stderr).splitlines() if l.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {victim}: damaged"), lines
