"""Draw a pruning-aware pretraining run as the EfficientLLM paper's Fig. 7.

    python -m pap.plot RUN_DIR [--out FILE.png]

Left: the three candidate saliencies (attention heads, FFN channels, stem / hidden
channels) of every pruning round. Right: the pruning ratio of query heads, FFN width and
hidden size (1 - current / starting) over training tokens. Both read what the run wrote
into its checkpoint directory: `pruning_events.jsonl` (one line per removal, with the
candidates of its round and the shape after it) and `metrics.jsonl` (the shape at every
step). The x axis spans the pruning stage only, up to the last removal: the continued
pretraining after it can be ten times longer and would squeeze the stage into a corner.
Also prints the architecture before and after, and the removals by kind.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from pap import checkpoint
from pap.arch import Arch
from pap.config import config_from_dict
from pap.errors import PapError, exit_status

KINDS = ("attn", "ffn", "stem")
LABELS = {"attn": "attention heads", "ffn": "FFN channels", "stem": "stem (hidden channels)"}
RATIOS = (("heads", "attention heads"), ("ffn", "FFN channels"), ("hidden", "hidden size"))


@dataclass
class ShapePoint:
    """Mean per-layer widths (and parameters) after a training step."""

    tokens: int
    params: float
    heads: float
    ffn: float
    hidden: float


@dataclass
class Run:
    """What a run's checkpoint directory says about its pruning."""

    run_dir: Path
    events: List[dict]
    """One per removal, in order (`pruning_events.jsonl`)."""
    shapes: List[ShapePoint]
    """One per optimizer step of the pruning stage, from `metrics.jsonl` (empty without it)."""
    start: ShapePoint
    """The shape before the first removal."""


def human(count: float) -> str:
    """1234567 -> 1.235M; tokens and parameters as papers write them."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(count) >= scale:
            return f"{count / scale:.4g}{suffix}"
    return f"{count:g}"


def _read_jsonl(path: Path) -> Iterator[dict]:
    """Records of a JSON-lines file, streamed (a long run's metrics are large).

    A last line without its newline is what a run killed mid-write leaves; it is skipped.
    Any other line that is not JSON is an error naming the line.
    """
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if not line.endswith("\n"):  # only the last line can lack its newline
                    return
                raise PapError(f"{path}:{number}: not a JSON line") from None


def _latest_state(run_dir: Path) -> Optional[dict]:
    """pap_state.json of the newest checkpoint (iteration numbers are zero-padded)."""
    states = sorted(run_dir.glob("iter_*/pap_state.json"))
    return json.loads(states[-1].read_text()) if states else None


def _source_arch(state: Optional[dict]):
    """The Arch the run started from (its init_from checkpoint, else its model config), or None."""
    if state is None:
        return None
    try:
        config = config_from_dict(state["config"])
        if config.checkpoint.init_from:
            return checkpoint.read(config.checkpoint.init_from).arch
        return Arch.from_model_config(config.model)
    except PapError:
        return None  # the source moved (or is relative to another directory): use the logs


def _starting_shape(state: Optional[dict], events: List[dict], shapes: List[ShapePoint]) -> ShapePoint:
    arch = _source_arch(state)
    if arch is not None:
        layers = range(arch.num_layers)
        return ShapePoint(0, arch.num_params(), sum(arch.num_heads(l) for l in layers) / arch.num_layers,
                          sum(arch.ffn) / arch.num_layers, arch.hidden_size)
    if shapes and shapes[0].tokens < events[0]["tokens"]:
        return ShapePoint(0, shapes[0].params, shapes[0].heads, shapes[0].ffn, shapes[0].hidden)
    first = events[0]  # undo the first removal: one head or FFN channel per layer, or one hidden channel
    kind = first["kind"]
    if "heads_per_layer" in first and kind in ("attn", "ffn"):  # it may have left layers whole (-1)
        touched = [i != -1 for i in first["indices"]]
        heads = [h + (kind == "attn" and t) for h, t in zip(first["heads_per_layer"], touched)]
        ffn = [f + (kind == "ffn" and t) for f, t in zip(first["ffn_per_layer"], touched)]
        return ShapePoint(0, math.nan, sum(heads) / len(heads), sum(ffn) / len(ffn), first["hidden"])
    return ShapePoint(0, math.nan, first["heads"] + (kind == "attn"), first["ffn"] + (kind == "ffn"),
                      first["hidden"] + (kind == "stem"))


def load_run(run_dir) -> Run:
    """Read a run's pruning record, with one clear error when there is none."""
    run_dir = Path(run_dir)
    events_file, metrics_file = run_dir / "pruning_events.jsonl", run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise PapError(f"{run_dir}: no such run directory (give the run's checkpoint.dir)")
    if not events_file.is_file():
        raise PapError(f"{events_file}: missing; this run never pruned (prune.enabled is false, or no "
                       f"pruning round has run yet)")
    events = list(_read_jsonl(events_file))
    if not events:
        raise PapError(f"{events_file}: empty; no pruning round has run yet")
    state = _latest_state(run_dir)
    if state is not None:
        per_iteration = state["config"]["train"]["global_batch_size"] * state["config"]["data"]["seq_length"]
    else:  # killed before its first checkpoint: the events' tokens give the rate
        per_iteration = events[0]["tokens"] // max(events[0]["iteration"], 1)
    last_iteration = events[-1]["iteration"]
    by_iteration: Dict[int, dict] = {}
    if metrics_file.is_file():
        for record in _read_jsonl(metrics_file):
            # Validation records carry no shape; a resumed run logs its repeated steps again,
            # and the later record of a step is the one that belongs to the run's history.
            if "pruning/params" in record and record["iteration"] <= last_iteration:
                by_iteration[record["iteration"]] = record
    shapes = [ShapePoint(i * per_iteration, r["pruning/params"], r["pruning/heads"], r["pruning/ffn"],
                         r["pruning/hidden"]) for i, r in sorted(by_iteration.items())]
    return Run(run_dir, events, shapes, _starting_shape(state, events, shapes))


def summary(run: Run) -> str:
    """Text: architecture before and after, removals by kind and when each kind began."""
    start, last = run.start, run.events[-1]
    counts = {kind: sum(e["kind"] == kind for e in run.events) for kind in KINDS}
    first = {}
    for event in run.events:
        first.setdefault(event["kind"], event["tokens"])
    kv = last["kv_heads"]
    kv_text = f"{kv[0]}" if len(set(kv)) == 1 else f"{min(kv)}-{max(kv)}"
    before_params = "" if math.isnan(start.params) else f"{start.params:,.0f} params, "
    began = ", ".join(f"{kind} at {human(first[kind])}" for kind in KINDS if kind in first)
    return (f"before: {before_params}{start.heads:g} heads/layer, FFN {start.ffn:g}, hidden {start.hidden:g}\n"
            f"after:  {last['params']:,} params, {last['heads']} heads/layer ({kv_text} KV heads/layer), "
            f"FFN {last['ffn']}, hidden {last['hidden']}\n"
            f"removals: {len(run.events)} ({', '.join(f'{counts[k]} {k}' for k in KINDS)}) over "
            f"{human(last['tokens'])} tokens; first removal: {began} tokens")


def draw(run: Run, out: Path) -> Path:
    """Write the Fig. 7 of a loaded run to `out` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; cluster nodes have no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    per_layer = [e for e in run.events if "heads_per_layer" in e]
    uneven = any(len(set(e["heads_per_layer"])) > 1 or len(set(e["ffn_per_layer"])) > 1 for e in per_layer)
    if uneven:  # layers of different widths (prune.layers greedy | adaptive): a panel of per-layer widths
        fig, axes = plt.subplots(1, 4, figsize=(22, 4.5))
        left, right = axes[0], axes[1]
        _draw_layers(per_layer, axes[2], axes[3])
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    rounds: Dict[int, dict] = {}
    for event in run.events:  # a round's first removal carries the candidates the round chose from
        rounds.setdefault(event["iteration"], event)
    for kind in KINDS:
        # A candidate is infinite (or absent) once its floors are reached: nothing left to choose.
        points = [(e["tokens"], e["candidates"][kind]) for e in rounds.values()
                  if e["candidates"].get(kind) is not None and math.isfinite(e["candidates"][kind])]
        if points:
            left.plot(*zip(*points), label=LABELS[kind], linewidth=1)
    left.set(title="saliency of the three pruning types", xlabel="tokens", ylabel="candidate saliency (sum)")
    left.set_yscale("log")
    left.legend()

    points = run.shapes or [ShapePoint(e["tokens"], e["params"], e["heads"], e["ffn"], e["hidden"])
                            for e in run.events]
    points = [run.start] + points
    for attr, label in RATIOS:
        initial = getattr(run.start, attr)
        right.plot([p.tokens for p in points], [1 - getattr(p, attr) / initial for p in points], label=label)
    right.set(title="pruning ratio", xlabel="tokens", ylabel="1 - current / starting", ylim=(0, 1))
    right.legend()
    for axes in (left, right, *(fig.axes[3:4] if uneven else [])):
        axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: human(x)))
    fig.suptitle(f"pruning-aware pretraining: {run.run_dir}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    fig.savefig(partial, dpi=100, format="png")
    plt.close(fig)
    partial.replace(out)  # never leave a half-written PNG under the final name
    return out


def _draw_layers(events: List[dict], final, over_time) -> None:
    """Heads and FFN channels of each layer after the last removal (bars, FFN on a second
    axis), and each layer's FFN width over tokens."""
    last = events[-1]
    layers = range(len(last["ffn_per_layer"]))
    final.bar([l - 0.2 for l in layers], last["heads_per_layer"], width=0.4, label="query heads")
    twin = final.twinx()
    twin.bar([l + 0.2 for l in layers], last["ffn_per_layer"], width=0.4, color="tab:orange", label="FFN channels")
    final.set(title="per-layer width at the end", xlabel="layer", ylabel="query heads")
    twin.set_ylabel("FFN channels")
    final.legend(loc="upper left")
    twin.legend(loc="upper right")
    tokens = [e["tokens"] for e in events]
    for layer in layers:
        over_time.plot(tokens, [e["ffn_per_layer"][layer] for e in events], linewidth=1, label=f"layer {layer}")
    over_time.set(title="per-layer FFN width", xlabel="tokens", ylabel="FFN channels")
    if len(layers) <= 12:
        over_time.legend(fontsize="small")


def plot_run(run_dir, out=None) -> Path:
    """Write the run's Fig. 7 as a PNG (default `RUN_DIR/pruning.png`); returns its path."""
    run = load_run(run_dir)
    return draw(run, Path(out) if out else run.run_dir / "pruning.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pap.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the run's checkpoint.dir (holds pruning_events.jsonl, metrics.jsonl)")
    parser.add_argument("--out", help="PNG to write (default RUN_DIR/pruning.png)")
    args = parser.parse_args(argv)

    def command():
        run = load_run(args.run_dir)
        print(summary(run))
        out = Path(args.out) if args.out else run.run_dir / "pruning.png"
        try:
            draw(run, out)
        except OSError as exc:
            raise PapError(f"{out}: cannot write ({exc.strerror or exc})") from None
        print(f"wrote {out}")

    return exit_status(command)

if __name__ == "__main__":
    sys.exit(main())
