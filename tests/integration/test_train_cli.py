"""The `pap.train` entry point end to end: resume after SIGKILL, resharded load, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import free_port, tiny_config

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def write_config(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def launch(nproc: int, config: str, *overrides: str, log: Path):
    """Start `pap.train` (torchrun for nproc > 1) in its own process group, output to `log`."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "pap.train", "--config", config, *overrides]
    else:
        cmd = [*TORCHRUN, "--nproc-per-node", str(nproc), "--master-port", str(free_port()),
               "-m", "pap.train", "--config", config, *overrides]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_tree(proc) -> None:
    """SIGKILL the launcher and every process under it, as a node failure would.

    torchrun starts its workers in their own sessions, so killing its group is not enough.
    """
    import psutil

    victims = [psutil.Process(proc.pid)]
    victims += victims[0].children(recursive=True)
    for victim in victims:
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    proc.wait()


def run(nproc, config, *overrides, log: Path, timeout=600):
    proc = launch(nproc, config, *overrides, log=log)
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-4000:]
    return log.read_text()


def step_losses(metrics_file: Path) -> dict:
    losses = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if "lm loss" in record:
            losses[record["iteration"]] = record["lm loss"]
    return losses


def validation_loss(output: str, iteration: int) -> float:
    marker = f"validation loss at iteration {iteration}: "
    lines = [l for l in output.splitlines() if l.startswith(marker)]
    assert lines, output[-3000:]
    return float(lines[-1][len(marker):])


@pytest.mark.slow
def test_sigkill_resume_and_reshard(tmp_path, random_dataset):
    iters = 40
    cfg = tiny_config(random_dataset, parallel={"tp": 2, "pp": 1},
                      train={"iters": iters, "warmup_iters": 2, "eval_iters": 2},
                      log={"interval": 10}, checkpoint={"save_interval": 4})

    # 1. Uninterrupted reference, TP=2.
    ref_dir = tmp_path / "ref"
    config = write_config(tmp_path / "ref.yaml", {**cfg, "checkpoint": {**cfg["checkpoint"], "dir": str(ref_dir)}})
    ref_out = run(2, config, log=tmp_path / "ref.log")
    reference = step_losses(ref_dir / "metrics.jsonl")
    assert sorted(reference) == list(range(1, iters + 1))
    assert (ref_dir / "tensorboard").is_dir() and any((ref_dir / "tensorboard").iterdir())

    # 2. The same run, SIGKILLed as soon as a checkpoint is complete.
    run_dir = tmp_path / "killed"
    config = write_config(tmp_path / "killed.yaml", {**cfg, "checkpoint": {**cfg["checkpoint"], "dir": str(run_dir)}})
    proc = launch(2, config, log=tmp_path / "killed.log")
    tracker = run_dir / "latest_checkpointed_iteration.txt"
    deadline = time.time() + 300
    while not tracker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    kill_tree(proc)
    saved = int(tracker.read_text())
    assert saved < iters, "the run finished before it could be killed"
    done_before_kill = step_losses(run_dir / "metrics.jsonl")
    assert max(done_before_kill) < iters

    # 3. Resume: the steps after the checkpoint reproduce the reference exactly.
    out = run(2, config, log=tmp_path / "resumed.log")
    assert f"resumed from {run_dir / f'iter_{saved:07d}'} at iteration {saved}" in out
    resumed = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines()[len(done_before_kill):]:
        record = json.loads(line)
        if "lm loss" in record:
            resumed[record["iteration"]] = record["lm loss"]
    assert sorted(resumed) == list(range(saved + 1, iters + 1))
    for iteration, loss in resumed.items():
        assert loss == pytest.approx(reference[iteration], abs=1e-6), iteration
    assert not list(run_dir.glob("*.partial"))

    # 4. The final TP=2 checkpoint loads at TP=1 and gives the same validation loss.
    config = write_config(tmp_path / "tp1.yaml", {**cfg, "parallel": {"tp": 1, "pp": 1},
                                                   "checkpoint": {**cfg["checkpoint"], "dir": str(ref_dir)}})
    tp1_out = run(1, config, log=tmp_path / "tp1.log")
    assert f"at iteration {iters}" in tp1_out
    assert validation_loss(tp1_out, iters) == pytest.approx(validation_loss(ref_out, iters), abs=1e-5)


def test_partial_checkpoint_is_ignored(tmp_path):
    """A save that died before its rename is not taken for a checkpoint."""
    from pap import checkpoint

    (tmp_path / "iter_0000008.partial").mkdir()
    (tmp_path / "iter_0000008.partial" / checkpoint.STATE_FILE).write_text("{}")
    (tmp_path / "iter_0000004").mkdir()  # no state file: the save never completed
    assert checkpoint.find_latest(str(tmp_path)) is None


BAD_INPUTS = {
    "unknown key": (["train.iterz=5"], "unknown config key 'train.iterz'"),
    "tp does not divide heads": (["parallel.tp=3"], "parallel.tp (3) does not divide model.num_attention_heads"),
    "missing dataset": (["data.blend=[/nonexistent/corpus_text_document]"],
                        "dataset prefix '/nonexistent/corpus_text_document' not found"),
    "vocab too large": (["model.vocab_size=100"], "contains token id"),
    "zero blend weight": (["data.blend=[0,{data},1,{data}]"], "data.blend weight 0 for"),
    "unwritable checkpoint.dir": (["checkpoint.dir={data}.idx/run"], "Not a directory; check the path"),
    "transformer engine required": (["model.transformer_impl=te"],
                                    "model.transformer_impl=te: Transformer Engine does not import"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_line(case, tmp_path, random_dataset):
    overrides, message = BAD_INPUTS[case]
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_config(random_dataset, checkpoint={"dir": str(run_dir)}))
    overrides = [o.format(data=random_dataset) for o in overrides]
    result = subprocess.run([sys.executable, "-m", "pap.train", "--config", config, *overrides], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [l for l in (result.stdout + result.stderr).splitlines() if l.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert not run_dir.exists(), "a failed start left output behind"


def test_dataset_metadata_vocab_is_checked(tmp_path, random_dataset):
    """A sidecar that records a larger tokenizer vocab than the model's is refused."""
    from pap.data import check_dataset
    from pap.errors import PapError

    prefix = str(tmp_path / "copy_text_document")
    for ext in (".bin", ".idx"):
        os.link(random_dataset + ext, prefix + ext)
    Path(prefix + ".meta.json").write_text(json.dumps({"vocab_size": 50000}))
    with pytest.raises(PapError, match="vocabulary of 50000"):
        check_dataset(prefix, 4096)


def test_weighted_blend_trains(tmp_path, random_dataset):
    """Two datasets blended 30/70, as in Megatron-LM's --data-path, feed a one-process run."""
    from tests.helpers import write_random_dataset

    other = write_random_dataset(str(tmp_path / "other_text_document"), seed=1)
    cfg = tiny_config(random_dataset, train={"iters": 3, "warmup_iters": 1, "eval_iters": 1},
                      data={"blend": [0.3, random_dataset, 0.7, other], "seq_length": 32, "split": "90,10,0"},
                      log={"interval": 1, "metrics_file": str(tmp_path / "m.jsonl")})
    out = run(1, write_config(tmp_path / "c.yaml", cfg), log=tmp_path / "blend.log")
    assert sorted(step_losses(tmp_path / "m.jsonl")) == [1, 2, 3]
    assert "validation loss at iteration 3" in out


@pytest.mark.slow
def test_pruning_run_logs_saves_and_resumes_pruned(tmp_path, random_dataset):
    """`pap.train` with pruning at TP=2: event log, pruning/* scalars, shape on the progress
    line, the `pruned` checkpoint at the target, and resuming into the pruned architecture."""
    run_dir = tmp_path / "run"
    cfg = tiny_config(random_dataset, parallel={"tp": 2, "pp": 1},
                      train={"iters": 6, "warmup_iters": 1, "eval_iters": 1},
                      log={"interval": 2}, checkpoint={"dir": str(run_dir), "save_interval": 3},
                      prune={"enabled": True, "target_params": 0.95, "prune_steps": 4,
                             "min_kv_heads": 2, "min_ffn": 2})
    config = write_config(tmp_path / "c.yaml", cfg)
    out = run(2, config, log=tmp_path / "prune.log")
    events = [json.loads(l) for l in (run_dir / "pruning_events.jsonl").read_text().splitlines()]
    assert events and all(e["kind"] in ("attn", "ffn", "stem") for e in events)
    assert "| params " in out and "pruned " in out
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    params = [r["pruning/params"] for r in records if "pruning/params" in r]
    assert params == sorted(params, reverse=True) and params[-1] == events[-1]["params"]
    last = [r for r in records if "pruning/params" in r][-1]
    for kind in ("attn", "ffn", "stem"):
        assert last[f"pruning/removed_{kind}"] == sum(e["kind"] == kind for e in events)
    # Every round's time is logged, and the step's time (hence tok/s, TFLOP/s) includes it.
    round_iterations = sorted({e["iteration"] for e in events})
    timed = {r["iteration"]: r for r in records if "pruning/round_s" in r}
    assert sorted(timed) == round_iterations
    for iteration, record in timed.items():
        assert 0 < record["pruning/round_s"] <= record["iteration-time"]
        assert f"pruning round at iteration {iteration}: " in out
    reached = [l for l in out.splitlines() if l.startswith("pap: pruning target reached at iteration ")]
    assert len(reached) == 1, out[-3000:]
    # The pruned model's validation loss, before any continued training, is reported.
    if events[-1]["iteration"] < 6:
        assert f"validation loss at iteration {events[-1]['iteration']}: " in out
    tagged = run_dir / "pruned"
    assert tagged.is_symlink() and json.loads((tagged / "pap_state.json").read_text())["iteration"] \
        == events[-1]["iteration"]
    state = json.loads(next(run_dir.glob("iter_0000006/pap_state.json")).read_text())
    assert sum(map(sum, state["arch"]["heads_per_group"])) < 16 or state["arch"]["ffn"][0] < 128 \
        or state["arch"]["hidden_size"] < 64
    # Resume at TP=1 with more steps: the run continues from the pruned architecture.
    cfg["train"]["iters"] = 7
    cfg["parallel"] = {"tp": 1, "pp": 1}
    # Pruning settings may change on resume only when the config says so (docs/RELIABILITY.md).
    cfg["prune"].update(min_kv_heads=1, min_ffn=1)
    cfg["checkpoint"]["allow_changes"] = ["prune.min_kv_heads", "prune.min_ffn"]
    out = run(1, write_config(tmp_path / "c2.yaml", cfg), log=tmp_path / "resume.log")
    assert f"pap: {events[-1]['params']:,} parameters" in out
    assert "changed on resume: prune.min_ffn 2 -> 1 (allowed by checkpoint.allow_changes)" in out


@pytest.mark.slow
def test_sigkill_mid_pruning_resumes_with_the_same_decisions(tmp_path, random_dataset):
    """Killed inside a saliency window (grad_steps=2, checkpoints every 3 steps), the resumed
    run removes the same groups and reproduces the uninterrupted run's losses."""
    iters = 30

    def config(name):
        cfg = tiny_config(random_dataset, train={"iters": iters, "warmup_iters": 1, "eval_iters": 0},
                          log={"interval": 10}, checkpoint={"dir": str(tmp_path / name), "save_interval": 3},
                          prune={"enabled": True, "target_params": 0.5, "grad_steps": 2, "min_ffn": 100})
        return write_config(tmp_path / f"{name}.yaml", cfg)

    run(1, config("ref"), log=tmp_path / "ref.log")
    reference_events = (tmp_path / "ref" / "pruning_events.jsonl").read_text().splitlines()
    reference = step_losses(tmp_path / "ref" / "metrics.jsonl")
    assert len(reference_events) >= 5

    proc = launch(1, config("killed"), log=tmp_path / "killed.log")
    tracker = tmp_path / "killed" / "latest_checkpointed_iteration.txt"
    deadline = time.time() + 300
    while not tracker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    kill_tree(proc)
    saved = int(tracker.read_text())
    assert saved < iters and saved % 2 == 1, "the kill must land inside a two-step window"
    out = run(1, config("killed"), log=tmp_path / "resumed.log")
    assert "saliency window restarts" not in out
    assert (tmp_path / "killed" / "pruning_events.jsonl").read_text().splitlines() == reference_events
    resumed = step_losses(tmp_path / "killed" / "metrics.jsonl")
    steps = [r["iteration"] for r in map(json.loads, (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines())
             if "lm loss" in r]
    assert steps == list(range(1, iters + 1)), "steps after the checkpoint are logged once, by the resumed run"
    for iteration in range(saved + 1, iters + 1):
        assert resumed[iteration] == pytest.approx(reference[iteration], abs=1e-6), iteration



def events_of(run_dir: Path) -> list:
    return [json.loads(l) for l in (run_dir / "pruning_events.jsonl").read_text().splitlines()]


def resume_copy(tmp_path: Path, source: Path, iteration: int, name: str, cfg: dict, nproc: int):
    """Resume a copy of `source`'s checkpoint `iteration` with `cfg` on `nproc` processes.

    Returns (console output, removals, step losses) of the resumed run."""
    import shutil

    run_dir = tmp_path / name
    run_dir.mkdir()
    shutil.copytree(source / f"iter_{iteration:07d}", run_dir / f"iter_{iteration:07d}")
    (run_dir / "pruning_events.jsonl").write_text("".join(
        json.dumps(e) + "\n" for e in events_of(source) if e["iteration"] <= iteration))
    cfg = {**cfg, "checkpoint": {**cfg["checkpoint"], "dir": str(run_dir)}}
    out = run(nproc, write_config(tmp_path / f"{name}.yaml", cfg), log=tmp_path / f"{name}.log")
    assert f"at iteration {iteration}" in out and "saliency window restarts" not in out
    return out, events_of(run_dir), step_losses(run_dir / "metrics.jsonl")


def decisions(events: list) -> list:
    return [(e["iteration"], e["kind"], e["indices"]) for e in events]


@pytest.mark.slow
def test_mid_window_resume_at_another_data_parallel_size(tmp_path, random_dataset):
    """A DP=2 checkpoint saved inside a saliency window (grad_steps=2, step 3) resumes at
    DP=1 with the saved window: the removals and losses follow the uninterrupted DP=2 run."""
    cfg = tiny_config(random_dataset, train={"iters": 8, "warmup_iters": 1, "eval_iters": 0},
                      checkpoint={"dir": str(tmp_path / "dp2"), "save_interval": 3},
                      prune={"enabled": True, "target_params": 0.5, "grad_steps": 2, "prune_steps": 2})
    run(2, write_config(tmp_path / "dp2.yaml", cfg), log=tmp_path / "dp2.log")
    reference = step_losses(tmp_path / "dp2" / "metrics.jsonl")
    out, events, resumed = resume_copy(tmp_path, tmp_path / "dp2", 3, "dp1", cfg, 1)
    assert "restored at a new layout" not in out  # DP replica 0's own state serves
    assert decisions(events) == decisions(events_of(tmp_path / "dp2"))
    for iteration in range(4, 9):
        assert resumed[iteration] == pytest.approx(reference[iteration], abs=1e-4), iteration


def assert_saved_as_own_shards(checkpoint: Path) -> None:
    """A TP=2 checkpoint of a pruned model holds each rank's own (uneven) shards as chunks of
    the full tensors, at their global offsets: nobody gathered and wrote a full tensor."""
    from torch.distributed.checkpoint import FileSystemReader

    arch = json.loads((checkpoint / "pap_state.json").read_text())["arch"]
    metadata = FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    fc2 = metadata["model/decoder.layers.0.mlp.linear_fc2.weight"]
    hidden, width = fc2.size
    chunks = sorted((tuple(c.offsets), tuple(c.sizes)) for c in fc2.chunks)
    assert len(chunks) == 2 and chunks[0][0] == (0, 0) and chunks[1][0] == (0, chunks[0][1][1]), chunks
    assert width == arch["ffn"][0] and sorted(c[1][1] for c in chunks) == [width // 2, width - width // 2]
    fc1 = metadata["model/decoder.layers.0.mlp.linear_fc1.weight"]
    assert len(fc1.chunks) == 4  # each rank: its gate rows and its up rows
    assert sum(c.sizes[0] * c.sizes[1] for c in fc1.chunks) == fc1.size[0] * fc1.size[1]
    norm = metadata["model/decoder.final_layernorm.weight"]
    assert [tuple(c.sizes) for c in norm.chunks] == [tuple(norm.size)]  # a TP replica, written once


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["pp2", "dp2_distributed_optimizer"])
def test_mid_window_resume_at_another_tp_pp_layout(layout, tmp_path, random_dataset):
    """A TP=2 run (metric mix, so Fisher sums too) saved one step into a three-step window
    resumes at PP=2, or at DP=2 with the distributed optimizer, from the layout-free window:
    the same removals and the same losses as the uninterrupted TP=2 run."""
    cfg = tiny_config(random_dataset, parallel={"tp": 2, "pp": 1},
                      train={"iters": 10, "warmup_iters": 1, "eval_iters": 0},
                      checkpoint={"dir": str(tmp_path / "tp2"), "save_interval": 4},
                      prune={"enabled": True, "metric": "mix", "target_params": 0.5, "grad_steps": 3,
                             "prune_steps": 3, "min_kv_heads": 2, "min_ffn": 2})
    run(2, write_config(tmp_path / "tp2.yaml", cfg), log=tmp_path / "tp2.log")
    reference_events = events_of(tmp_path / "tp2")
    assert {e["iteration"] for e in reference_events} == {3, 6, 9}
    reference = step_losses(tmp_path / "tp2" / "metrics.jsonl")
    cfg["parallel"] = ({"tp": 1, "pp": 2} if layout == "pp2" else
                       {"tp": 1, "pp": 1, "distributed_optimizer": True})
    assert_saved_as_own_shards(tmp_path / "tp2" / "iter_0000004")
    out, events, resumed = resume_copy(tmp_path, tmp_path / "tp2", 4, layout, cfg, 2)
    assert "saliency window restored at a new layout (1 steps)" in out
    assert decisions(events) == decisions(reference_events)
    for iteration in range(5, 11):
        assert resumed[iteration] == pytest.approx(reference[iteration], abs=1e-4), iteration


def test_exit_file_saves_and_stops_then_the_run_goes_on(tmp_path, random_dataset):
    """An exit file present after step 1 stops both ranks there with a checkpoint and is
    removed; started again, the run trains on to the end."""
    run_dir, exit_file = tmp_path / "run", tmp_path / "stop-now"
    exit_file.touch()
    cfg = tiny_config(random_dataset, parallel={"tp": 2, "pp": 1}, train={"iters": 3, "eval_iters": 0},
                      checkpoint={"dir": str(run_dir)})
    config = write_config(tmp_path / "c.yaml", cfg)
    out = run(2, config, f"train.exit_file={exit_file}", log=tmp_path / "first.log")
    assert "pap: exit requested: stopped at iteration 1" in out
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert not exit_file.exists()
    out = run(2, config, f"train.exit_file={exit_file}", log=tmp_path / "second.log")
    assert "resumed from" in out and sorted(step_losses(run_dir / "metrics.jsonl")) == [1, 2, 3]


def test_exit_signal_saves_and_stops(tmp_path, random_dataset):
    """SIGUSR1 sent to a training process: checkpoint at the step it lands on, exit status 0."""
    run_dir = tmp_path / "run"
    cfg = tiny_config(random_dataset, train={"iters": 100000, "eval_iters": 0}, checkpoint={"dir": str(run_dir)})
    log = tmp_path / "run.log"
    proc = launch(1, write_config(tmp_path / "c.yaml", cfg), log=log)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    stopped = int(log.read_text().split("pap: exit requested: stopped at iteration ")[1].split(",")[0])
    assert 2 <= stopped < 100000
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == str(stopped)


@pytest.mark.slow
@pytest.mark.parametrize("distopt", [False, True], ids=["plain", "distopt"])
def test_bf16_resume_keeps_fp32_masters(distopt, tmp_path, random_dataset):
    """bf16 with fp32 masters, pruning every step: killed after the checkpoint at step 3 and
    resumed, the run repeats the uninterrupted run's removals and losses exactly (the
    checkpoint holds the masters and Adam's step; rebuilding masters from bf16 weights, as
    before, moved the losses); resumed at DP=1 it makes the same removals, losses within 1e-3."""
    import shutil

    parallel = {"tp": 1, "pp": 1, "distributed_optimizer": distopt}
    cfg = tiny_config(random_dataset, parallel=parallel, model={"params_dtype": "bf16"},
                      train={"iters": 6, "warmup_iters": 1, "eval_iters": 0},
                      checkpoint={"dir": str(tmp_path / "ref"), "save_interval": 3},
                      prune={"enabled": True, "target_params": 0.5, "grad_steps": 1, "min_ffn": 100,
                             "min_kv_heads": 2})
    run(2, write_config(tmp_path / "ref.yaml", cfg), log=tmp_path / "ref.log")
    state = json.loads((tmp_path / "ref" / "iter_0000003" / "pap_state.json").read_text())
    assert state["masters"] is True and state["adam_step"] == 3.0
    reference = step_losses(tmp_path / "ref" / "metrics.jsonl")
    # At DP=1 each micro-batch's bf16 forward and backward are the same computations; only the
    # fp32 gradient sums change order (~1e-7), so the decisions hold and the losses stay close.
    for name, nproc, tolerance in (("same", 2, 0.0), ("dp1", 1, 1e-3)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        shutil.copytree(tmp_path / "ref" / "iter_0000003", run_dir / "iter_0000003")
        (run_dir / "pruning_events.jsonl").write_text("".join(
            json.dumps(e) + "\n" for e in events_of(tmp_path / "ref") if e["iteration"] <= 3))
        resumed_cfg = {**cfg, "checkpoint": {**cfg["checkpoint"], "dir": str(run_dir)}}
        run(nproc, write_config(tmp_path / f"{name}.yaml", resumed_cfg), log=tmp_path / f"{name}.log")
        assert decisions(events_of(run_dir)) == decisions(events_of(tmp_path / "ref")), name
        resumed = step_losses(run_dir / "metrics.jsonl")
        for iteration in (4, 5, 6):
            assert abs(resumed[iteration] - reference[iteration]) <= tolerance, (name, iteration)


@pytest.mark.slow
@pytest.mark.parametrize("dtype,tolerance", [("fp32", 1e-4), ("bf16", 6e-3)], ids=["fp32", "bf16"])
def test_distributed_optimizer_checkpoint_resumes_at_another_layout(dtype, tolerance, tmp_path, random_dataset):
    """DP=2 with the distributed optimizer saves at step 3; the run resumed at TP=2 with the
    plain optimizer follows the uninterrupted DP=2 run (Adam state, and in bf16 the fp32
    masters, carried over). bf16 tolerance: TP=2 rounds its GEMMs differently (see
    tests/distributed/test_parallel_equivalence.py)."""
    import shutil

    cfg = tiny_config(random_dataset, parallel={"tp": 1, "pp": 1, "distributed_optimizer": True},
                      model={"params_dtype": dtype},
                      train={"iters": 6, "warmup_iters": 1, "eval_iters": 0},
                      checkpoint={"dir": str(tmp_path / "dp2"), "save_interval": 3})
    run(2, write_config(tmp_path / "dp2.yaml", cfg), log=tmp_path / "dp2.log")
    reference = step_losses(tmp_path / "dp2" / "metrics.jsonl")
    resumed_dir = tmp_path / "tp2"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "dp2" / "iter_0000003", resumed_dir / "iter_0000003")
    cfg["parallel"] = {"tp": 2, "pp": 1, "distributed_optimizer": False}
    cfg["checkpoint"]["dir"] = str(resumed_dir)
    out = run(2, write_config(tmp_path / "tp2.yaml", cfg), log=tmp_path / "tp2.log")
    assert "at iteration 3" in out
    resumed = step_losses(resumed_dir / "metrics.jsonl")
    for iteration in (4, 5, 6):
        assert resumed[iteration] == pytest.approx(reference[iteration], abs=tolerance), iteration
