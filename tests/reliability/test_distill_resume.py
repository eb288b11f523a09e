"""A pruning run with distillation killed (SIGKILL) one step into a saliency window resumes
with the uninterrupted run's removals and losses: at the same layout (each rank's own window
state; the teacher reloaded from its checkpoint) and at another (the layout-free window, the
teacher rebuilt in the new layout)."""

import json

import pytest

from tests.distributed.distill_workers import train_source
from tests.helpers import run_distributed, tiny_config
from tests.integration.test_train_cli import decisions, events_of, resume_copy, run, step_losses, write_config
from tests.reliability.test_kills import _killed, _lines

pytestmark = pytest.mark.slow

ITERS = 8


@pytest.fixture(scope="module")
def reference(tmp_path_factory, random_dataset):
    """The student's source, a wider teacher, and the uninterrupted 2-process run (TP=2)."""
    root = tmp_path_factory.mktemp("distill_resume")
    run_distributed(train_source, 1, tiny_config(random_dataset, train={"iters": 3, "eval_iters": 0},
                                                 checkpoint={"dir": str(root / "source")}))
    run_distributed(train_source, 1, tiny_config(random_dataset, model={"hidden_size": 96, "ffn_hidden_size": 192},
                                                 train={"iters": 6, "eval_iters": 0, "seed": 7},
                                                 checkpoint={"dir": str(root / "teacher")}))
    cfg = tiny_config(random_dataset, parallel={"tp": 2, "pp": 1},
                      train={"iters": ITERS, "warmup_iters": 1, "eval_iters": 0}, log={"interval": 1},
                      checkpoint={"dir": str(root / "ref"), "save_interval": 3, "init_from": str(root / "source")},
                      prune={"enabled": True, "target_params": 0.5, "grad_steps": 2, "min_ffn": 100,
                             "min_kv_heads": 2},
                      distill={"enabled": True, "teacher": str(root / "teacher"), "alpha": 0.5, "temperature": 2.0})
    out = run(2, write_config(root / "ref.yaml", cfg), log=root / "ref.log")
    assert "pap: distill: teacher" in out and " kl " in out, out[-2000:]
    events = _lines(root / "ref" / "pruning_events.jsonl")
    assert {json.loads(e)["iteration"] for e in events} == {2, 4, 6, 8}
    kl = [json.loads(l)["distill/kl"] for l in _lines(root / "ref" / "metrics.jsonl") if "distill/kl" in l]
    assert len(kl) == ITERS and max(kl) > 0.01, kl
    return {"dir": root / "ref", "cfg": cfg, "events": events, "losses": step_losses(root / "ref" / "metrics.jsonl")}


def test_killed_mid_window_resumes_as_if_uninterrupted(tmp_path, reference):
    cfg = {**reference["cfg"], "checkpoint": {**reference["cfg"]["checkpoint"], "dir": str(tmp_path / "run")}}
    config = write_config(tmp_path / "run.yaml", cfg)
    _killed(config, "metrics.after_write:5", tmp_path / "killed.log", nproc=2)
    out = run(2, config, log=tmp_path / "again.log")
    assert "at iteration 3" in out and "restarts" not in out and "pap: distill: teacher" in out, out[-2000:]
    assert _lines(tmp_path / "run" / "pruning_events.jsonl") == reference["events"]
    losses = step_losses(tmp_path / "run" / "metrics.jsonl")
    for iteration in range(1, ITERS + 1):
        assert losses[iteration] == pytest.approx(reference["losses"][iteration], abs=1e-6), iteration


def test_resumes_at_another_layout(tmp_path, reference):
    """TP=2 -> PP=2: the teacher's hidden state now travels between stages."""
    cfg = {**reference["cfg"], "parallel": {"tp": 1, "pp": 2}}
    out, events, resumed = resume_copy(tmp_path, reference["dir"], 3, "pp2", cfg, 2)
    assert "saliency window restored at a new layout" in out, out[-2000:]
    assert decisions(events) == decisions([json.loads(e) for e in reference["events"]])
    for iteration in range(4, ITERS + 1):
        assert resumed[iteration] == pytest.approx(reference["losses"][iteration], abs=1e-4), iteration
