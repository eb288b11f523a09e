"""What a resume may change (`pap.resume_settings`), the values a config refuses for their
meaning, and the pure checkpoint checks behind a resume (coverage, rollback)."""

import json
import os
import time

import pytest

from pap import checkpoint, resume_settings
from pap.config import ConfigError, PapConfig, load_config
from pap.errors import PapError
from pap.run_lock import FileLock

TINY = ["data.blend=[x]", "model.hidden_size=64", "model.ffn_hidden_size=128", "model.num_attention_heads=4",
        "model.num_query_groups=2", "train.iters=10", "train.warmup_iters=1"]


def _dict(*overrides):
    return load_config(None, TINY + list(overrides)).to_dict()


@pytest.mark.parametrize("override", [
    "prune.target_params=0.4", "prune.enabled=true", "train.global_batch_size=32", "data.seq_length=128",
    "data.blend=[y]", "data.split=90,10,0", "train.seed=7", "prune.grad_steps=2", "checkpoint.init_from=ckpt",
])
def test_settings_that_make_another_run_are_refused_unless_allowed(override):
    key, _, _ = override.partition("=")
    saved, current = _dict(), _dict(override)
    with pytest.raises(PapError) as caught:
        resume_settings.review(saved, current, [], "iter_0000004")
    assert str(caught.value).startswith(f"{key} changed since iter_0000004") and "checkpoint.allow_changes" in str(caught.value)
    lines = resume_settings.review(saved, current, [key], "iter_0000004")
    assert len(lines) == 1 and lines[0].startswith(f"changed on resume: {key} ") and "allowed" in lines[0]


@pytest.mark.parametrize("override,line", [
    ("train.lr=0.001", "changed on resume: train.lr 0.003 -> 0.001"),
    ("train.min_lr=0.0001", "changed on resume: train.min_lr 0.0003 -> 0.0001"),
    ("train.micro_batch_size=2", "changed on resume: train.micro_batch_size 4 -> 2"),
    ("parallel.tp=2", "changed on resume: parallel.tp 1 -> 2"),
    ("log.interval=5", "changed on resume: log.interval 10 -> 5"),
])
def test_safe_settings_are_applied_and_named(override, line):
    assert resume_settings.review(_dict(), _dict(override), [], "iter_0000004") == [line]


def test_a_longer_run_says_the_schedule_keeps_its_decay():
    (line,) = resume_settings.review(_dict(), _dict("train.iters=20"), [], "iter_0000004")
    assert line.startswith("changed on resume: train.iters 10 -> 20 (the learning rate keeps decaying over "
                           "the checkpoint's 10 steps")


def test_model_shape_is_left_to_the_model_check_and_unchanged_settings_say_nothing():
    assert resume_settings.review(_dict(), _dict("model.hidden_size=128"), [], "x") == []
    assert resume_settings.review(_dict(), _dict(), [], "x") == []


def test_allow_changes_names_only_refused_settings():
    with pytest.raises(ConfigError, match="checkpoint.allow_changes names 'train.lr', which a resume applies"):
        load_config(None, TINY + ["checkpoint.allow_changes=[train.lr]"])
    with pytest.raises(ConfigError, match="'data.nothing', which is not a config key"):
        load_config(None, TINY + ["checkpoint.allow_changes=[data.nothing]"])
    load_config(None, TINY + ["checkpoint.allow_changes=[data.seq_length, prune.target_params]"])


def test_every_setting_has_a_policy():
    rows = resume_settings.table_rows()
    keys = {key for key, _, _ in rows}
    assert {"train.lr", "data.seq_length", "prune.target_params", "model.hidden_size"} <= keys
    assert all(policy in (resume_settings.APPLY, resume_settings.REFUSE, resume_settings.KEEP)
               for _, policy, _ in rows)
    assert all(reason for _, policy, reason in rows if policy == resume_settings.REFUSE)


def test_changed_schedule_settings_reach_the_scheduler():
    """Applied means applied: the loaded scheduler takes the new peak and decay from the resumed step on."""
    import torch
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    def scheduler(lr, decay):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        return OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=lr, min_lr=lr / 10, lr_warmup_steps=1,
                                       lr_decay_steps=decay, lr_decay_style="cosine", start_wd=0.1, end_wd=0.1,
                                       wd_incr_steps=decay, wd_incr_style="constant")

    old = scheduler(0.01, 10)
    old.step(increment=4)
    resumed = scheduler(0.01, 10)
    resumed.load_state_dict(old.state_dict())
    saved, current = _dict("train.lr=0.01"), _dict("train.lr=0.02", "train.lr_decay_iters=40")
    resume_settings.apply_schedule(resumed, saved, current, 10)
    assert resumed.max_lr == 0.02 and resumed.lr_decay_steps == 40 and resumed.num_steps == 4
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(resumed.get_lr(resumed.optimizer.param_groups[0]))
    assert resumed.optimizer.param_groups[0]["lr"] > 0.015


@pytest.mark.parametrize("override,key", [
    ("prune.target_params=2.0", "prune.target_params"),
    ("prune.target_params=2500.5", "prune.target_params"),
    ("prune.target_params=500", "prune.target_params"),
    ("prune.min_ffn=1000", "prune.min_ffn"),
    ("prune.min_heads=5", "prune.min_heads"),
    ("prune.min_hidden=65", "prune.min_hidden"),
    ("prune.min_kv_heads=0", "prune.min_kv_heads"),
])
def test_values_outside_their_meaning_are_refused(override, key):
    with pytest.raises(ConfigError) as caught:
        load_config(None, TINY + ["prune.enabled=true", override])
    assert f": {key} " in str(caught.value)


def test_counts_and_fractions_still_load():
    for target in ("0.5", "1", "100000", "134e6"):
        load_config(None, TINY + ["prune.enabled=true", f"prune.target_params={target}"])


def test_floors_are_checked_against_the_starting_checkpoint():
    from pap.arch import Arch
    from pap.config import PruneConfig
    from pap.prune_hook import check_floors_fit

    arch = Arch.from_model_config(PapConfig().model)
    check_floors_fit(PruneConfig(min_ffn=arch.ffn[0]), arch)
    with pytest.raises(PapError, match=r"prune.min_ffn \(705\) is larger than the starting model's FFN width \(704\)"):
        check_floors_fit(PruneConfig(min_ffn=705), arch)


# ---- checkpoint checks --------------------------------------------------------------------------

def _fake_checkpoint(root, iteration):
    path = checkpoint.iteration_dir(str(root), iteration)
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(b"x" * 10)
    (path / checkpoint.STATE_FILE).write_text(json.dumps({"iteration": iteration}))
    checkpoint._write_checksums(path)
    return path


def test_checksums_cover_the_state_file_and_gaps_are_named(tmp_path):
    path = _fake_checkpoint(tmp_path, 4)
    assert checkpoint.STATE_FILE in json.loads((path / checkpoint.CHECKSUMS).read_text())
    assert checkpoint.verify(path) is None and checkpoint.unverified(path) is None
    (path / checkpoint.STATE_FILE).write_text(json.dumps({"iteration": 5}))
    assert "pap_state.json" in checkpoint.verify(path)
    table = json.loads((path / checkpoint.CHECKSUMS).read_text())
    del table[checkpoint.STATE_FILE]
    (path / checkpoint.CHECKSUMS).write_text(json.dumps(table))
    assert "pap_state.json is not covered" in checkpoint.unverified(path)
    (path / checkpoint.CHECKSUMS).unlink()
    assert "has no checksums.json" in checkpoint.unverified(path)


def test_a_damaged_older_state_does_not_block_listing(tmp_path):
    _fake_checkpoint(tmp_path, 2)
    _fake_checkpoint(tmp_path, 4)
    (checkpoint.iteration_dir(str(tmp_path), 2) / checkpoint.STATE_FILE).write_text("{")
    assert [p.name for p in checkpoint.checkpoint_dirs(str(tmp_path))] == ["iter_0000004", "iter_0000002"]


def test_rollback_names_checkpoints_written_before_the_tracker(tmp_path):
    """Newer checkpoints older than the tracker file were pointed away from by hand; one written
    after it is the crash window between a save's rename and its tracker update."""
    _fake_checkpoint(tmp_path, 2)
    _fake_checkpoint(tmp_path, 4)
    tracker = tmp_path / checkpoint.TRACKER
    tracker.write_text("2\n")
    assert [p.name for p in checkpoint.overwritten_by_rollback(str(tmp_path))] == ["iter_0000004"]
    past = time.time() - 60
    os.utime(tracker, (past, past))
    assert checkpoint.overwritten_by_rollback(str(tmp_path)) == []


def test_a_damaged_checkpoint_is_refused_by_readers_unless_told(tmp_path, monkeypatch):
    path = _fake_checkpoint(tmp_path, 4)
    (path / checkpoint.STATE_FILE).write_text(json.dumps({
        "iteration": 4, "consumed_samples": 0, "layout": {}, "scheduler": None,
        "arch": {"vocab_size": 8, "padded_vocab_size": 8, "hidden_size": 4, "head_dim": 2,
                 "heads_per_group": [[2]], "ffn": [4], "tie_embeddings": False}}))
    checkpoint._write_checksums(path)
    assert checkpoint.read_verified(str(tmp_path)).iteration == 4
    (path / "weights.bin").write_bytes(b"y" * 10)
    monkeypatch.delenv(checkpoint.NO_VERIFY_ENV, raising=False)
    with pytest.raises(PapError, match="weights.bin does not match the checksum.*pass --no-verify"):
        checkpoint.read_verified(str(tmp_path), "--no-verify")
    monkeypatch.setenv(checkpoint.NO_VERIFY_ENV, "1")
    said = []
    checkpoint.read_verified(str(tmp_path), "--no-verify", report=said.append)
    assert len(said) == 1 and "reading it anyway (--no-verify)" in said[0]


def test_a_metrics_file_is_held_by_one_run(tmp_path):
    first = FileLock(str(tmp_path / "m.jsonl"), "log.metrics_file").acquire()
    try:
        with pytest.raises(PapError, match=r"log.metrics_file .*m.jsonl is in use by pid"):
            FileLock(str(tmp_path / "m.jsonl"), "log.metrics_file").acquire()
    finally:
        first.release()
    FileLock(str(tmp_path / "m.jsonl"), "log.metrics_file").acquire().release()
