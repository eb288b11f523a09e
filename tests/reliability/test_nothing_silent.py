"""Nothing goes on silently with something other than what the user has: every file a resume
or a reader takes from a checkpoint is verified, every setting changed on resume is applied
and named or refused, and the cases that used to hang or end in a traceback end in one line.
docs/RELIABILITY.md lists each case with its test.

One tiny run (checkpoints at iterations 2 and 4) is trained once per module; each case works
on its own copy of it.
"""

import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import tiny_config
from tests.integration.test_train_cli import REPO, kill_tree, launch, run, step_losses, write_config

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _cfg(random_dataset, run_dir, **train):
    return tiny_config(random_dataset, train={"iters": 4, "warmup_iters": 1, "eval_iters": 0, **train},
                       checkpoint={"dir": str(run_dir), "save_interval": 2})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, random_dataset):
    """A finished 4-step run with checkpoints at iterations 2 and 4."""
    base = tmp_path_factory.mktemp("trained")
    run(1, write_config(base / "c.yaml", _cfg(random_dataset, base / "run")), log=base / "train.log")
    return base / "run"


@pytest.fixture
def copy(trained, tmp_path, random_dataset):
    """(run directory, config path) of a private copy of the trained run."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    (run_dir / "pap.lock").unlink(missing_ok=True)
    return run_dir, write_config(tmp_path / "c.yaml", _cfg(random_dataset, run_dir))


def _train(config, *overrides, env=None, timeout=300, module="pap.train", preexec_fn=None):
    """(exit status, non-empty output lines) of one `pap.train` run."""
    args = [sys.executable, "-m", module] + (["--config", config] if config else []) + list(overrides)
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env={**ENV, **(env or {})}, preexec_fn=preexec_fn)
    return result.returncode, [l for l in (result.stdout + result.stderr).splitlines() if l.strip()]


def _errors(lines):
    return [l for l in lines if l.startswith("error:")]


# ---- every checkpoint byte verified ----------------------------------------------------------

def test_a_changed_state_file_is_refused(copy):
    """pap_state.json is covered by checksums.json: one changed digit of consumed_samples stops
    the resume naming the file (before: read without a word, other samples trained)."""
    run_dir, config = copy
    state = run_dir / "iter_0000004" / "pap_state.json"
    text = state.read_text()
    assert '"consumed_samples": 32' in text
    state.write_text(text.replace('"consumed_samples": 32', '"consumed_samples": 33'))
    rc, lines = _train(config, "train.iters=6")
    assert rc == 2 and len(_errors(lines)) == 1, lines
    assert str(state) in _errors(lines)[0] and "checkpoint.fallback=true" in _errors(lines)[0]


def test_missing_checksums_are_said_once(copy):
    """A checkpoint without checksums.json resumes, and says once that nothing of it could be
    verified (before: silence)."""
    run_dir, config = copy
    (run_dir / "iter_0000004" / "checksums.json").unlink()
    rc, lines = _train(config, "train.iters=5")
    assert rc == 0, lines[-5:]
    said = [l for l in lines if "has no checksums.json" in l]
    assert len(said) == 1 and "iter_0000004" in said[0], lines


def test_a_truncated_state_file_falls_back_or_is_skipped_when_older(copy):
    """A truncated newest pap_state.json: with checkpoint.fallback=true the run resumes from the
    previous checkpoint (before: refused). A truncated one in an older checkpoint does not
    block a resume from the intact newest (before: refused)."""
    run_dir, config = copy
    older = run_dir / "iter_0000002" / "pap_state.json"
    older.write_text(older.read_text()[:50])
    rc, lines = _train(config, "train.iters=5")
    assert rc == 0 and any("resumed from" in l and "at iteration 4" in l for l in lines), lines[-5:]
    newest = run_dir / "iter_0000005" / "pap_state.json"
    newest.write_text(newest.read_text()[:50])
    rc, lines = _train(config, "train.iters=6")
    assert rc == 2 and len(_errors(lines)) == 1, lines
    assert str(newest) in _errors(lines)[0] and "checkpoint.fallback=true" in _errors(lines)[0]
    rc, lines = _train(config, "train.iters=6", "checkpoint.fallback=true")
    assert rc == 0 and any("resumed from" in l and "at iteration 4" in l for l in lines), lines[-5:]


def test_readers_verify_a_checkpoint(copy, random_dataset, tmp_path):
    """`pap.eval loss` reads a checkpoint the way a resume does: a flipped byte in a .distcp
    shard is refused naming the file, and --no-verify reads it anyway, saying so in one line
    (before: the damaged weights were read without a word)."""
    run_dir, _ = copy
    victim = next((run_dir / "iter_0000004").glob("*.distcp"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    args = ["loss", "--ckpt", str(run_dir), "--data", random_dataset, "--tokens", "64", "--split", "90,10,0"]
    rc, lines = _train(None, *args, module="pap.eval")
    assert rc == 2 and len(_errors(lines)) == 1 and str(victim) in _errors(lines)[0], lines
    assert "--no-verify" in _errors(lines)[0]
    rc, lines = _train(None, *args, "--no-verify", module="pap.eval")
    assert rc == 0 and any("reading it anyway" in l for l in lines), lines[-5:]


# ---- settings changed on resume ----------------------------------------------------------------

def test_resume_names_applied_changes_and_refuses_the_others(copy):
    """A changed learning rate is applied and named; a changed sequence length is refused with
    the setting's name unless checkpoint.allow_changes lists it (before: both silent)."""
    run_dir, config = copy
    rc, lines = _train(config, "train.iters=5", "data.seq_length=16")
    assert rc == 2 and len(_errors(lines)) == 1, lines
    assert _errors(lines)[0].startswith("error: data.seq_length changed since") and "allow_changes" in _errors(lines)[0]
    rc, lines = _train(config, "train.iters=5", "train.lr=0.005", "train.lr_decay_iters=8")
    assert rc == 0, lines[-5:]
    assert "pap: changed on resume: train.lr 0.01 -> 0.005" in lines
    assert "pap: changed on resume: train.lr_decay_iters null -> 8" in lines
    rc, lines = _train(config, "train.iters=6", "data.seq_length=16", "checkpoint.allow_changes=[data.seq_length]")
    assert rc == 0, lines[-5:]
    assert any(l.startswith("pap: changed on resume: data.seq_length 32 -> 16 (allowed") for l in lines), lines


def test_iters_at_or_below_the_checkpoint_are_said(copy):
    """train.iters below the checkpoint's iteration is refused naming both; equal says there is
    nothing to train (before: exit 0, nothing said)."""
    run_dir, config = copy
    rc, lines = _train(config, "train.iters=3")
    assert rc == 2 and _errors(lines)[0].startswith("error: train.iters (3) is below the iteration of"), lines
    rc, lines = _train(config)
    assert rc == 0 and any("nothing to train" in l for l in lines), lines[-5:]


def test_a_tracker_pointed_back_is_refused_unless_rollback(copy):
    """A tracker naming iter_2 while iter_4 exists: refused, naming what a resume would replace;
    with checkpoint.rollback=true it resumes from iter_2 and says iter_4 will be replaced
    (before: rolled back and overwrote iter_4 without a word)."""
    run_dir, config = copy
    time.sleep(0.01)
    (run_dir / "latest_checkpointed_iteration.txt").write_text("2\n")
    rc, lines = _train(config)
    assert rc == 2 and len(_errors(lines)) == 1, lines
    assert "iter_0000004" in _errors(lines)[0] and "checkpoint.rollback=true" in _errors(lines)[0]
    rc, lines = _train(config, "checkpoint.rollback=true")
    assert rc == 0 and any("the newer iter_0000004 will be replaced" in l for l in lines), lines[-5:]
    assert any("resumed from" in l and "at iteration 2" in l for l in lines)


# ---- shared files, hangs, tracebacks -------------------------------------------------------------

def test_a_shared_metrics_file_is_never_truncated_by_another_run(tmp_path, random_dataset):
    """Two runs with their own checkpoint.dir and one log.metrics_file: the second stops at start
    naming the file, and the first one's lines are intact (before: emptied)."""
    metrics = tmp_path / "shared.jsonl"
    long = tiny_config(random_dataset, train={"iters": 100000, "eval_iters": 0}, log={"metrics_file": str(metrics)},
                       checkpoint={"dir": str(tmp_path / "a"), "save_interval": 0, "save_at_end": False})
    holder = launch(1, write_config(tmp_path / "a.yaml", long), log=tmp_path / "a.log")
    try:
        deadline = time.time() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
            time.sleep(0.05)
        before = metrics.read_text()
        short = {**long, "train": {**long["train"], "iters": 2}, "checkpoint": {"dir": str(tmp_path / "b")}}
        rc, lines = _train(write_config(tmp_path / "b.yaml", short))
        assert rc == 2 and len(_errors(lines)) == 1, lines
        assert _errors(lines)[0].startswith(f"error: log.metrics_file {metrics} is in use by pid ")
        assert metrics.read_text().startswith(before)
    finally:
        kill_tree(holder)


def test_a_corpus_shorter_than_one_sample_is_one_line(tmp_path, trained):
    """One 5-token document with seq_length 32: pap.train and pap.eval stop at once naming the
    prefix and both numbers (before: megatron's dataset builder looped forever)."""
    import numpy as np

    from data_prep.writer import write_documents

    prefix = str(tmp_path / "short_text_document")
    write_documents(prefix, [[5, 6, 7, 8, 0]], np.uint16)
    cfg = tiny_config(prefix, train={"iters": 2, "warmup_iters": 0}, checkpoint={"dir": str(tmp_path / "r")})
    rc, lines = _train(write_config(tmp_path / "c.yaml", cfg), timeout=120)
    assert rc == 2 and len(_errors(lines)) == 1, lines
    assert prefix in _errors(lines)[0] and " 5 tokens" in _errors(lines)[0] and "32" in _errors(lines)[0]
    rc, lines = _train(None, "loss", "--ckpt", str(trained), "--data", prefix, module="pap.eval", timeout=120)
    assert rc == 2 and len(_errors(lines)) == 1 and prefix in _errors(lines)[0], lines
    assert " 5 tokens" in _errors(lines)[0] and "32" in _errors(lines)[0]


def test_a_full_disk_during_a_save_is_one_line(tmp_path, random_dataset):
    """A write refused mid-save (a file-size limit stands in for a full disk): one `error:` line
    with the system's reason, no traceback (before: a CheckpointException traceback)."""
    cfg = _cfg(random_dataset, tmp_path / "run")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))

    rc, lines = _train(write_config(tmp_path / "c.yaml", cfg), preexec_fn=limit)
    assert rc == 2 and len(_errors(lines)) == 1 and not any("Traceback" in l for l in lines), lines[-20:]
    assert "File too large" in _errors(lines)[0] and "ulimit" in _errors(lines)[0]
    assert not (tmp_path / "run" / "iter_0000002").exists()


def test_ctrl_c_is_one_line_saying_what_was_saved(tmp_path, random_dataset):
    """Ctrl-C after step 3 (checkpoint at 2): one line naming the iteration and the checkpoint
    the next start resumes from, status 130 (before: a 44-line traceback)."""
    cfg = _cfg(random_dataset, tmp_path / "run")
    rc, lines = _train(write_config(tmp_path / "c.yaml", cfg),
                       env={"PAP_KILL_AT": "metrics.after_write:3", "PAP_KILL_SIGNAL": "SIGINT"})
    assert rc == 130 and not any("Traceback" in l for l in lines), lines[-20:]
    said = [l for l in lines if "interrupted" in l]
    assert len(said) == 1 and "at iteration 3" in said[0] and "iter_0000002" in said[0], lines[-5:]
    assert sorted(step_losses(tmp_path / "run" / "metrics.jsonl")) == [1, 2, 3]



# ---- conversion ----------------------------------------------------------------------------------

def test_mcore_to_hf_verifies_its_checkpoint(tmp_path, trained):
    """mcore-to-hf verifies its checkpoint as a resume does: a flipped byte in a shard is one
    line naming the file and --no-verify (before: the damaged shard was exported)."""
    from tests.hf.test_convert import convert

    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    victim = next((ckpt / "iter_0000004").glob("*.distcp"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    result = convert("mcore-to-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "export"), expect_ok=False)
    assert result.returncode == 2 and len(_errors(result.stderr.splitlines())) == 1, result.stderr[-2000:]
    assert str(victim) in result.stderr and "--no-verify" in result.stderr
    assert not (tmp_path / "export").exists()


def test_hf_to_mcore_refuses_a_dropped_head_and_an_out_inside_its_input(tmp_path):
    """hf-to-mcore refuses a tied config whose file stores a different lm_head.weight (an equal
    copy is fine), and an --out inside the input folder (before: the head was dropped without
    a word, and the output was written into the input)."""
    from safetensors.torch import load_file, save_file

    from tests.hf.test_convert import convert, make_hf_model

    hf = make_hf_model(tmp_path / "hf", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                       tie_word_embeddings=True)
    weights = hf / "model.safetensors"
    tensors = load_file(str(weights))
    assert "lm_head.weight" not in tensors
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + 1.0
    save_file(tensors, str(weights), metadata={"format": "pt"})
    result = convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "mcore"), expect_ok=False)
    assert result.returncode == 2 and "lm_head.weight" in result.stderr and "tie_word_embeddings" in result.stderr, \
        result.stderr[-2000:]
    assert not (tmp_path / "mcore").exists()

    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, str(weights), metadata={"format": "pt"})
    result = convert("hf-to-mcore", "--hf", str(hf), "--out", str(hf / "inside"), expect_ok=False)
    assert result.returncode == 2 and "inside the input" in result.stderr, result.stderr[-2000:]
    assert not (hf / "inside").exists()
    convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "mcore"))  # an equal copy of the head is fine
