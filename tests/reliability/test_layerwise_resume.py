"""Exact resume mid-window under `prune.layers: greedy | adaptive` (docs/PRUNING.md, "Layers
pruned to different widths"): SIGKILL one step into a two-step window (checkpoint at step 3,
killed after step 5), then start again at the same layout; or resume a copy of the step-3
checkpoint at another layout from the layout-free window. Either way the run makes the
uninterrupted run's removals and losses. Adaptive also carries the window's per-layer cosine
sums (`pap.pruning.layer_cosine`): each event of an increment's plan holds the cosines, so a
window restored without them logs other numbers (and usually plans other removals)."""

import json

import pytest

from tests.helpers import tiny_config
from tests.integration.test_train_cli import decisions, events_of, resume_copy, run, step_losses, write_config
from tests.reliability.test_kills import _killed, _lines

pytestmark = pytest.mark.slow

ITERS = 8
MODES = {
    # Three single-group removals per two-step window; the FFN floor (126 of 128: two channels
    # a layer may go) makes heads and hidden channels go from step 6, so every kind comes up.
    "greedy": {"layers": "greedy", "normalize": "params", "metric": "mix", "prune_steps": 3, "min_ffn": 126,
               "min_heads": 2, "min_kv_heads": 2, "min_hidden": 62},
    # One published increment (+0.05 of each layer's source width, -/+ A z_l) per two-step
    # window (rounds at 2, 4, 6, 8); single query heads (two KV groups, at the TP=2 floor).
    "adaptive": {"layers": "adaptive", "metric": "first", "increment": 0.05, "min_ffn": 2, "min_heads": 2,
                 "min_kv_heads": 2, "adapt_unit": "head"},
}
# Saved at (the reference and the killed run), and resumed at by the layout-free window.
SAVED = {"greedy": {"tp": 2, "pp": 1}, "adaptive": {"tp": 1, "pp": 1, "distributed_optimizer": True}}
OTHER = {"greedy": {"tp": 1, "pp": 2}, "adaptive": {"tp": 2, "pp": 1}}


def _cfg(random_dataset, run_dir, mode, parallel):
    return tiny_config(random_dataset, parallel=parallel, train={"iters": ITERS, "warmup_iters": 1, "eval_iters": 0},
                       log={"interval": 1}, checkpoint={"dir": str(run_dir), "save_interval": 3},
                       prune={"enabled": True, "target_params": 0.5, "grad_steps": 2, **MODES[mode]})


@pytest.fixture(scope="module")
def references(tmp_path_factory, random_dataset):
    """Per mode: the uninterrupted 2-process run at the SAVED layout (its directory, config,
    event lines and step losses), made once for the module."""
    out = {}

    def get(mode):
        if mode not in out:
            tmp = tmp_path_factory.mktemp(f"ref_{mode}")
            cfg = _cfg(random_dataset, tmp / "ref", mode, SAVED[mode])
            run(2, write_config(tmp / "ref.yaml", cfg), log=tmp / "ref.log")
            events = _lines(tmp / "ref" / "pruning_events.jsonl")
            parsed = [json.loads(l) for l in events]
            # Removals in every window, one before and several after the checkpoint at step 3.
            assert {e["iteration"] for e in parsed} == {2, 4, 6, 8}, parsed
            per_layer = parsed[-1]["heads_per_layer"], parsed[-1]["ffn_per_layer"]
            assert any(len(set(widths)) > 1 for widths in per_layer), per_layer  # layers differ
            if mode == "greedy":  # heads (leaving uneven KV groups), FFN and hidden channels
                assert {e["kind"] for e in parsed if e["iteration"] > 3} == {"attn", "ffn", "stem"}
            if mode == "adaptive":  # each increment's first event carries its plan
                assert _increment_cosines(parsed).keys() == {2, 4, 6, 8}
            out[mode] = {"dir": tmp / "ref", "cfg": cfg, "events": events,
                         "losses": step_losses(tmp / "ref" / "metrics.jsonl")}
        return out[mode]

    return get


def _increment_cosines(events: list) -> dict:
    """Iteration -> the layer cosines of that round's plan (adaptive)."""
    return {e["iteration"]: e["layer_cosine"] for e in events if "layer_cosine" in e}


@pytest.mark.parametrize("mode", list(MODES))
def test_killed_mid_window_resumes_as_if_uninterrupted(mode, tmp_path, random_dataset, references):
    """SIGKILL after step 5 (checkpoint at 3, one step into the window ending at 4), start
    again at the same 2-process layout: each rank's own window state (Taylor and Fisher sums,
    adaptive's cosine sums) is restored, and the event log and losses are the uninterrupted
    run's, line for line and to 1e-6."""
    reference = references(mode)
    config = write_config(tmp_path / "run.yaml", _cfg(random_dataset, tmp_path / "run", mode, SAVED[mode]))
    _killed(config, "metrics.after_write:5", tmp_path / "killed.log", nproc=2)
    assert [json.loads(l)["iteration"] for l in _lines(tmp_path / "run" / "pruning_events.jsonl")][-1] == 4
    import torch

    saved = [torch.load(f, weights_only=False)["pruning"]
             for f in sorted((tmp_path / "run" / "iter_0000003").glob("rank_state_*.pt"))]
    assert len(saved) == 2 and all(s["accumulator"]["steps"] == 1 for s in saved), "the checkpoint holds the open window"
    if mode == "adaptive":
        assert any(s["cosine"]["tokens"] for s in saved), "the window's cosine sums are in the checkpoint"
    out = run(2, config, log=tmp_path / "again.log")
    assert "at iteration 3" in out and "restarts" not in out and "new layout" not in out, out[-2000:]
    assert _lines(tmp_path / "run" / "pruning_events.jsonl") == reference["events"]
    steps = [json.loads(l)["iteration"] for l in _lines(tmp_path / "run" / "metrics.jsonl") if "lm loss" in json.loads(l)]
    assert steps == list(range(1, ITERS + 1)), "each step logged once"
    losses = step_losses(tmp_path / "run" / "metrics.jsonl")
    for iteration in range(1, ITERS + 1):
        assert losses[iteration] == pytest.approx(reference["losses"][iteration], abs=1e-6), iteration


@pytest.mark.parametrize("mode", list(MODES))
def test_mid_window_resume_at_another_layout(mode, tmp_path, random_dataset, references):
    """The step-3 checkpoint (one step into a two-step window) of the uninterrupted run resumes
    at another layout (greedy: TP=2 -> PP=2; adaptive: DP=2 with the distributed optimizer ->
    TP=2) from the layout-free window: the same removals, the same increment plans (cosines
    to 1e-6) and the same losses (1e-4: the order of floating-point additions changes)."""
    reference = references(mode)
    cfg = {**reference["cfg"], "parallel": OTHER[mode]}
    out, events, resumed = resume_copy(tmp_path, reference["dir"], 3, mode, cfg, 2)
    assert "saliency window restored at a new layout (1 steps)" in out, out[-2000:]
    ref_events = [json.loads(l) for l in reference["events"]]
    assert decisions(events) == decisions(ref_events)
    for iteration in range(4, ITERS + 1):
        assert resumed[iteration] == pytest.approx(reference["losses"][iteration], abs=1e-4), iteration
    if mode == "adaptive":
        want, got = _increment_cosines(ref_events), _increment_cosines(events)
        assert got.keys() == want.keys() == {2, 4, 6, 8}
        for iteration in want:
            assert got[iteration] == pytest.approx(want[iteration], abs=1e-6), iteration
