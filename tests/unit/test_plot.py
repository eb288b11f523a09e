"""`pap.plot`: Fig. 7 of a run from its event log and metrics, and clear errors."""

import json

import pytest

from pap.errors import PapError
from pap.plot import main, plot_run, summary


def write_run(run_dir, kinds=("ffn", "ffn", "attn", "stem")):
    """A run of 4 steps (1,024 tokens each) from a 4-layer, 8-head, FFN 64, hidden 32 model."""
    run_dir.mkdir()
    state = run_dir / "iter_0000004"
    state.mkdir()
    config = {"model": {"vocab_size": 256, "hidden_size": 32, "num_layers": 4, "num_attention_heads": 8,
                        "num_query_groups": 4, "ffn_hidden_size": 64},
              "train": {"global_batch_size": 8}, "data": {"seq_length": 128}}
    (state / "pap_state.json").write_text(json.dumps({"config": config}))
    heads, ffn, hidden = 8, 64, 32
    events, metrics = [], []
    for step, kind in enumerate(kinds, 1):
        heads, ffn, hidden = heads - (kind == "attn"), ffn - (kind == "ffn"), hidden - (kind == "stem")
        events.append({"iteration": step, "tokens": step * 1024, "kind": kind, "indices": [0] * 4, "score": 0.1,
                       "candidates": {"attn": 1.0 * step, "ffn": 0.1 * step, "stem": 0.5}, "params": 1000 - step,
                       "heads": heads, "kv_heads": [4] * 4, "ffn": ffn, "hidden": hidden})
        metrics.append({"iteration": step, "lm loss": 5.0, "pruning/params": 1000 - step, "pruning/heads": heads,
                        "pruning/kv_heads": 4, "pruning/ffn": ffn, "pruning/hidden": hidden})
    (run_dir / "pruning_events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run_dir


def test_plot_writes_a_png_and_the_summary_is_right(tmp_path):
    from PIL import Image

    from pap.arch import Arch
    from pap.config import ModelConfig

    run_dir = write_run(tmp_path / "run")
    out = plot_run(run_dir)
    assert out == run_dir / "pruning.png"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 300
    start = Arch.from_model_config(ModelConfig(vocab_size=256, hidden_size=32, num_layers=4,
                                               num_attention_heads=8, num_query_groups=4, ffn_hidden_size=64))
    text = summary(run_dir)
    assert f"before: {start.num_params():,} params, 8 heads/layer, FFN 64, hidden 32" in text
    assert "after:  996 params, 7 heads/layer (KV heads per layer [4, 4, 4, 4]), FFN 62, hidden 31" in text
    assert "removals: 4 (1 attn, 2 ffn, 1 stem) over 4,096 tokens" in text
    assert not list(run_dir.glob("*.partial*"))


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
            events.write_text(events.read_text().splitlines()[0] + "\n{oops\n")
    with pytest.raises(PapError, match=message):
        plot_run(run_dir)
    assert main([str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (run_dir / "pruning.png").exists()
