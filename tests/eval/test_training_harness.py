"""`eval.harness_tasks` during training: at the interval the run saves, rank 0 evaluates
the checkpoint's export with lm-eval, and `eval/<task>` reaches TensorBoard and the metrics file."""

import json

import pytest

from tests.eval.common import train_tokenizer, write_task
from tests.helpers import tiny_config
from tests.integration.test_train_cli import run, write_config

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")


@pytest.mark.slow
def test_harness_runs_during_training_and_logs_eval_scalars(tmp_path, random_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tokenizer = train_tokenizer(tmp_path / "tokenizer")
    write_task(tmp_path / "tasks", "pap_toy_mc")
    run_dir = tmp_path / "run"
    cfg = tiny_config(random_dataset, model={"vocab_size": 300}, train={"iters": 2, "warmup_iters": 1, "eval_iters": 0},
                      checkpoint={"dir": str(run_dir)},
                      eval={"harness_tasks": ["pap_toy_mc"], "harness_interval": 2, "harness_limit": 4,
                            "harness_tokenizer": str(tokenizer), "harness_include_path": str(tmp_path / "tasks")})
    # Two ranks (DP=2): the child process must not take torchrun's variables for its own world.
    out = run(2, write_config(tmp_path / "c.yaml", cfg), log=tmp_path / "train.log")
    assert "eval harness at iteration 2: pap_toy_mc " in out, out[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scores = [r for r in records if "eval/pap_toy_mc" in r]
    assert len(scores) == 1 and scores[0]["iteration"] == 2
    document = json.loads((run_dir / "eval" / "iter_0000002.json").read_text())
    assert document["models"][0]["results"]["pap_toy_mc"]["acc,none"] == scores[0]["eval/pap_toy_mc"]
    assert document["models"][0]["n-samples"]["pap_toy_mc"]["effective"] == 4
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("eval/pap_toy_mc")] == pytest.approx([scores[0]["eval/pap_toy_mc"]])
    # The harness's checkpoint is the run's last: no second save at the end.
    assert sorted(p.name for p in run_dir.glob("iter_*")) == ["iter_0000002"]
