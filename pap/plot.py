"""Draw a pruning-aware pretraining run as the EfficientLLM paper's Fig. 7.

    python -m pap.plot RUN_DIR [--out FILE.png]

Left: the three candidate saliencies (attention heads, FFN channels, stem / hidden
channels) of every pruning round. Right: the pruning ratio of query heads, FFN width and
hidden size (1 - current / starting) over training tokens. Both read what the run wrote
into its checkpoint directory: `pruning_events.jsonl` (one line per removal, with the
candidates of its round and the shape after it) and `metrics.jsonl` (the shape at every
step). Also prints the architecture before and after, and the removals by kind.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from pap.errors import PapError

KINDS = ("attn", "ffn", "stem")
LABELS = {"attn": "attention heads", "ffn": "FFN channels", "stem": "stem (hidden channels)"}


@dataclass
class ShapePoint:
    """Mean per-layer widths (and params) after a training step."""

    tokens: int
    params: float
    heads: float
    ffn: float
    hidden: float


def _read_jsonl(path: Path) -> List[dict]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise PapError(f"{path}:{number}: not a JSON line") from None
    return records


def _tokens_per_iteration(run_dir: Path) -> Optional[int]:
    """global_batch_size * seq_length of the run, from its newest checkpoint's config."""
    states = sorted(run_dir.glob("iter_*/pap_state.json"))
    if not states:
        return None
    config = json.loads(states[-1].read_text())["config"]
    return config["train"]["global_batch_size"] * config["data"]["seq_length"]


def load_run(run_dir: Path):
    """(removal events, shape per step) of the run in `run_dir`, with clear errors."""
    events_file, metrics_file = run_dir / "pruning_events.jsonl", run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise PapError(f"{run_dir}: no such run directory (give the run's checkpoint.dir)")
    if not events_file.is_file():
        raise PapError(f"{events_file}: missing; this run never pruned (prune.enabled is false, or no "
                       f"pruning round has run yet)")
    events = _read_jsonl(events_file)
    if not events:
        raise PapError(f"{events_file}: empty; no pruning round has run yet")
    per_iteration = _tokens_per_iteration(run_dir)
    if per_iteration is None:  # tokens of the events give the rate
        first = events[0]
        per_iteration = first["tokens"] // max(first["iteration"], 1)
    shapes = []
    if metrics_file.is_file():
        for record in _read_jsonl(metrics_file):
            if "pruning/params" in record:
                shapes.append(ShapePoint(record["iteration"] * per_iteration, record["pruning/params"],
                                         record["pruning/heads"], record["pruning/ffn"], record["pruning/hidden"]))
    return events, shapes


def _source_arch(run_dir: Path):
    """The Arch the run started from (its init_from checkpoint, else its model config), or None."""
    from pap import checkpoint
    from pap.arch import Arch
    from pap.config import config_from_dict

    states = sorted(run_dir.glob("iter_*/pap_state.json"))
    if not states:
        return None
    config = config_from_dict(json.loads(states[-1].read_text())["config"])
    if config.checkpoint.init_from:
        try:
            return checkpoint.read(config.checkpoint.init_from).arch
        except PapError:
            return None  # the source moved; fall back to the event log
    return Arch.from_model_config(config.model)


def _starting_shape(events: List[dict], shapes: List[ShapePoint], run_dir: Path) -> ShapePoint:
    """The shape before the first removal."""
    arch = _source_arch(run_dir)
    if arch is not None:
        layers = range(arch.num_layers)
        return ShapePoint(0, arch.num_params(), sum(arch.num_heads(l) for l in layers) / arch.num_layers,
                          sum(arch.ffn) / arch.num_layers, arch.hidden_size)
    if shapes and shapes[0].tokens < events[0]["tokens"]:
        return shapes[0]
    first = events[0]  # undo the first removal
    undo = {"attn": (1, 0, 0), "ffn": (0, 1, 0), "stem": (0, 0, 1)}[first["kind"]]
    return ShapePoint(0, float("nan"), first["heads"] + undo[0], first["ffn"] + undo[1], first["hidden"] + undo[2])


def summary(run_dir: Path) -> str:
    """Text: architecture before and after, and removals by kind."""
    events, shapes = load_run(run_dir)
    start, last = _starting_shape(events, shapes, run_dir), events[-1]
    counts = Counter(e["kind"] for e in events)
    before = (f"{start.params:,.0f} params, " if start.params == start.params else "") + \
        f"{start.heads:g} heads/layer, FFN {start.ffn:g}, hidden {start.hidden:g}"
    return (f"before: {before}\n"
            f"after:  {last['params']:,} params, {last['heads']} heads/layer (KV heads per layer "
            f"{last['kv_heads']}), FFN {last['ffn']}, hidden {last['hidden']}\n"
            f"removals: {len(events)} ({', '.join(f'{counts[k]} {k}' for k in KINDS)}) over "
            f"{last['tokens']:,} tokens")


def plot_run(run_dir, out=None) -> Path:
    """Write the run's Fig. 7 as a PNG (default `RUN_DIR/pruning.png`); returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on cluster nodes
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    events, shapes = load_run(run_dir)
    start = _starting_shape(events, shapes, run_dir)
    out = Path(out) if out else run_dir / "pruning.png"

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for kind in KINDS:
        # One point per round: its first removal carries the candidates the round started from.
        rounds = {}
        for event in events:
            value = event["candidates"][kind]
            if event["tokens"] not in rounds and value is not None and value != float("inf"):
                rounds[event["tokens"]] = value
        if rounds:
            left.plot(list(rounds), list(rounds.values()), label=LABELS[kind], linewidth=1)
    left.set(title="saliency of the three pruning types", xlabel="tokens", ylabel="candidate saliency")
    left.set_yscale("log")
    left.legend()

    points = shapes or [ShapePoint(e["tokens"], e["params"], e["heads"], e["ffn"], e["hidden"]) for e in events]
    xs = [p.tokens for p in points]
    for attr, label in (("heads", "attention heads"), ("ffn", "FFN channels"), ("hidden", "hidden size")):
        first = getattr(start, attr)
        right.plot(xs, [1 - getattr(p, attr) / first for p in points], label=label)
    right.set(title="pruning ratio", xlabel="tokens", ylabel="1 - current / starting", ylim=(0, 1))
    right.legend()
    fig.suptitle(f"pruning-aware pretraining: {run_dir}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.png")
    fig.savefig(partial, dpi=100)
    plt.close(fig)
    partial.replace(out)  # never leave a half-written PNG under the final name
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pap.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="the run's checkpoint.dir (holds pruning_events.jsonl, metrics.jsonl)")
    parser.add_argument("--out", help="PNG to write (default RUN_DIR/pruning.png)")
    args = parser.parse_args(argv)
    try:
        print(summary(Path(args.run_dir)))
        print(f"wrote {plot_run(args.run_dir, args.out)}")
    except PapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
