"""`pap.plot`: Fig. 7 of a run from its event log and metrics, its summary, and clear errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pap.errors import PapError
from pap.plot import human, load_run, main, plot_run, summary

REPO = Path(__file__).resolve().parents[2]
MODEL = {"vocab_size": 256, "hidden_size": 32, "num_layers": 4, "num_attention_heads": 8,
         "num_query_groups": 4, "ffn_hidden_size": 64}
TOKENS_PER_STEP = 8 * 128


def write_run(run_dir, kinds=("ffn", "ffn", "attn", "stem"), extra_steps=2, checkpoint=True):
    """A run from a 4-layer, 8-head, FFN 64, hidden 32 model: one removal per step, then
    `extra_steps` of plain training; 1,024 tokens per step."""
    run_dir.mkdir()
    if checkpoint:
        state = run_dir / "iter_0000004"
        state.mkdir()
        config = {"model": MODEL, "train": {"global_batch_size": 8}, "data": {"seq_length": 128}}
        (state / "pap_state.json").write_text(json.dumps({"config": config}))
    heads, ffn, hidden, params = 8, 64, 32, 1000
    events, metrics = [], []
    for step in range(1, len(kinds) + extra_steps + 1):
        record = {"iteration": step, "lm loss": 5.0}
        if step <= len(kinds):
            kind = kinds[step - 1]
            heads, ffn, hidden = heads - (kind == "attn"), ffn - (kind == "ffn"), hidden - (kind == "stem")
            params -= 1
            candidates = {"attn": 1.0 * step, "ffn": 0.1 * step, "stem": float("inf") if step == 1 else 0.5}
            events.append({"iteration": step, "tokens": step * TOKENS_PER_STEP, "kind": kind, "indices": [0] * 4,
                           "score": 0.1, "candidates": candidates, "params": params, "heads": heads,
                           "kv_heads": [4, 4, 3, 4], "ffn": ffn, "hidden": hidden})
            record.update({f"pruning/saliency_{k}": v for k, v in candidates.items()})
        record.update({"pruning/params": params, "pruning/heads": heads, "pruning/kv_heads": 4,
                       "pruning/ffn": ffn, "pruning/hidden": hidden})
        metrics.append(record)
    metrics.append({"iteration": len(metrics), "lm loss validation": 4.0})
    (run_dir / "pruning_events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run_dir


def source_params():
    from pap.arch import Arch
    from pap.config import ModelConfig

    return Arch.from_model_config(ModelConfig(**MODEL)).num_params()


def assert_png(path, min_size=(600, 300)):
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        image.verify()


def test_plot_writes_a_png_and_the_summary_is_right(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run")
    out = plot_run(run_dir)
    assert out == run_dir / "pruning.png"
    assert_png(out)
    assert not [p for p in run_dir.iterdir() if "partial" in p.name]
    text = summary(load_run(run_dir))
    assert f"before: {source_params():,} params, 8 heads/layer, FFN 64, hidden 32\n" in text
    assert "after:  996 params, 7 heads/layer (3-4 KV heads/layer), FFN 62, hidden 31\n" in text
    assert text.endswith("removals: 4 (1 attn, 2 ffn, 1 stem) over 4.096K tokens; "
                         "first removal: attn at 3.072K, ffn at 1.024K, stem at 4.096K tokens")
    assert main([str(run_dir), "--out", str(tmp_path / "figs" / "fig7.png")]) == 0
    assert_png(tmp_path / "figs" / "fig7.png")
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {tmp_path / 'figs' / 'fig7.png'}"


def test_shapes_cover_the_pruning_stage_once_per_step(tmp_path):
    """Continued-pretraining steps are left out; a resumed run's repeated steps count once (the later)."""
    run_dir = write_run(tmp_path / "run", extra_steps=3)
    metrics = run_dir / "metrics.jsonl"
    repeated = {"iteration": 2, "pruning/params": 990, "pruning/heads": 8, "pruning/kv_heads": 4,
                "pruning/ffn": 62, "pruning/hidden": 32}
    with open(metrics, "a") as f:  # as a run resumed from a checkpoint at step 1 logs step 2 again
        f.write(json.dumps(repeated) + "\n")
    run = load_run(run_dir)
    assert [p.tokens for p in run.shapes] == [1024, 2048, 3072, 4096]
    assert [p.params for p in run.shapes] == [999, 990, 997, 996]
    assert run.start.tokens == 0 and run.start.ffn == 64


def test_a_run_killed_mid_write_still_plots(tmp_path):
    run_dir = write_run(tmp_path / "run")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 7, "lm lo')  # no newline: the process died while writing
    assert len(load_run(run_dir).shapes) == 4
    assert_png(plot_run(run_dir))


def test_without_a_checkpoint_or_metrics_the_logs_suffice(tmp_path):
    """Killed before its first checkpoint: tokens per step and the starting shape come from the events."""
    run_dir = write_run(tmp_path / "run", checkpoint=False)
    (run_dir / "metrics.jsonl").unlink()
    run = load_run(run_dir)
    assert run.shapes == []
    assert (run.start.heads, run.start.ffn, run.start.hidden) == (8, 64, 32)
    assert summary(run).startswith("before: 8 heads/layer, FFN 64, hidden 32\n")
    assert_png(plot_run(run_dir))


def test_a_source_checkpoint_that_moved_falls_back_to_the_logs(tmp_path):
    run_dir = write_run(tmp_path / "run")
    state = run_dir / "iter_0000004" / "pap_state.json"
    config = json.loads(state.read_text())["config"]
    config["checkpoint"] = {"init_from": str(tmp_path / "gone")}
    state.write_text(json.dumps({"config": config}))
    start = load_run(run_dir).start
    assert math.isnan(start.params) and (start.heads, start.ffn, start.hidden) == (8, 64, 32)


@pytest.mark.parametrize("damage, message", [
    ("no_dir", "no such run directory"),
    ("no_events", "this run never pruned"),
    ("empty_events", "no pruning round has run yet"),
    ("bad_line", "pruning_events.jsonl:2: not a JSON line"),
])
def test_bad_run_dirs_are_one_clear_line(damage, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    if damage != "no_dir":
        write_run(run_dir)
        events = run_dir / "pruning_events.jsonl"
        if damage == "no_events":
            events.unlink()
        elif damage == "empty_events":
            events.write_text("")
        else:
            lines = events.read_text().splitlines()
            events.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(PapError, match=message):
        plot_run(run_dir)
    assert main([str(run_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""
    assert not (run_dir / "pruning.png").exists()


def test_an_unwritable_output_is_one_clear_line(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run")
    assert main([str(run_dir), "--out", str(run_dir / "metrics.jsonl" / "fig.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run_dir / 'metrics.jsonl' / 'fig.png'}: cannot write")
    assert len(err.strip().splitlines()) == 1


def test_human():
    assert [human(x) for x in (512, 1024, 44_490_000_000, 1.2e12)] == ["512", "1.024K", "44.49B", "1.2T"]


@pytest.mark.slow
def test_a_real_run(tmp_path, random_dataset):
    """`pap.train` prunes to a target, then `python -m pap.plot` draws and summarises it."""
    from tests.helpers import tiny_config

    run_dir = tmp_path / "run"
    cfg = tiny_config(random_dataset, train={"iters": 8, "warmup_iters": 1, "eval_iters": 0},
                      prune={"enabled": True, "target_params": 0.8, "prune_steps": 16},
                      checkpoint={"dir": str(run_dir)}, log={"interval": 4})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    train = subprocess.run([sys.executable, "-m", "pap.train", "--config", str(config)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "pruning target reached" in train.stdout
    plot = subprocess.run([sys.executable, "-m", "pap.plot", str(run_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert plot.returncode == 0, plot.stderr
    assert_png(run_dir / "pruning.png")
    events = [json.loads(line) for line in (run_dir / "pruning_events.jsonl").read_text().splitlines()]
    start = 180_800  # tiny_config's model
    assert plot.stdout.startswith(f"before: {start:,} params, 4 heads/layer, FFN 128, hidden 64\n")
    assert f"after:  {events[-1]['params']:,} params" in plot.stdout
    assert events[-1]["params"] <= 0.8 * start < events[-2]["params"]
    assert f"removals: {len(events)} (" in plot.stdout
    run = load_run(run_dir)  # the continued-pretraining steps after the target are left out
    assert run.shapes[-1].tokens == events[-1]["iteration"] * 8 * 32 < 8 * 8 * 32


def test_layers_of_different_widths_get_the_per_layer_panels(tmp_path, monkeypatch):
    """Events with per-layer widths that differ (greedy, adaptive) draw the per-layer panels
    from them; equal widths do not."""
    import pap.plot

    drawn = []
    original = pap.plot._draw_layers
    monkeypatch.setattr(pap.plot, "_draw_layers", lambda events, *axes: (drawn.append(events), original(events, *axes)))
    run_dir = write_run(tmp_path / "uniform")
    plot_run(run_dir)
    assert drawn == []
    run_dir = write_run(tmp_path / "layers")
    events = [json.loads(l) for l in (run_dir / "pruning_events.jsonl").read_text().splitlines()]
    for step, event in enumerate(events, 1):
        event["indices"] = [0, -1, -1, -1]  # one layer's head or channel at a time
        event["heads_per_layer"] = [8 - sum(e["kind"] == "attn" for e in events[:step]), 8, 8, 8]
        event["ffn_per_layer"] = [64 - sum(e["kind"] == "ffn" for e in events[:step]), 64, 64, 64]
    (run_dir / "pruning_events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert_png(plot_run(run_dir))
    assert len(drawn) == 1 and drawn[0][-1]["ffn_per_layer"] == [62, 64, 64, 64]
