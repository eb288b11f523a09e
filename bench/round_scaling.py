"""How a pruning round's cost grows with the model: round time, bytes moved and peak memory vs step time.

    python bench/round_scaling.py [--sizes 5M 30M 110M 350M] [--layouts tp1 tp2 dp2_distopt]
                                  [--kind ffn|stem] [--rounds 3]

Each size and layout runs in a fresh `torchrun` (1 or 2 processes, CPU or GPUs), bf16 with
fp32 masters, micro batch 1: a few training steps, then `--rounds` forced removals, each
timed on its own (with a barrier before it), with a training step after each. `ffn`
takes one FFN channel from every layer (at TP=2 the balanced placement then moves one
channel per layer between the ranks); `stem` takes a hidden channel, a column or row of
every tensor. Prints one Markdown row per layout and size with the worst rank's figures:
parameters, median step time, median round time, the round in steps, the bytes a rank
sent to other ranks and copied locally in a round, and the peak RSS during the rounds
over the peak during training. Per layout, the growth exponent of round time in
parameters (round time ~ params^e).

Sizes: `5M` is configs/tiny.yaml's shape; `30M` hidden 512, FFN 2048, 8 layers; `110M` and
`350M` are SmolLM-1.7B's layer shape (hidden 2048, FFN 8192, 32 heads) with 2 and 6
layers; `24L-narrow` is SmolLM-1.7B's 24 layers at hidden 64 (the part of a round that
does not grow with tensor sizes); vocab 4096 untied throughout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    "5M": {"hidden_size": 256, "num_layers": 4, "num_attention_heads": 8, "num_query_groups": 4, "ffn_hidden_size": 704},
    "30M": {"hidden_size": 512, "num_layers": 8, "num_attention_heads": 8, "num_query_groups": 4,
            "ffn_hidden_size": 2048},
    "110M": {"hidden_size": 2048, "num_layers": 2, "num_attention_heads": 32, "num_query_groups": 32,
             "ffn_hidden_size": 8192},
    "350M": {"hidden_size": 2048, "num_layers": 6, "num_attention_heads": 32, "num_query_groups": 32,
             "ffn_hidden_size": 8192},
    # SmolLM-1.7B's 24 layers at a negligible width: what a round costs that does not
    # depend on tensor sizes (building megatron's objects, planning, one copy call per tensor).
    "24L-narrow": {"hidden_size": 64, "num_layers": 24, "num_attention_heads": 4, "num_query_groups": 4,
                   "ffn_hidden_size": 128},
}


LAYOUTS = {"tp1": (1, {}), "tp2": (2, {"tp": 2}), "dp2_distopt": (2, {"distributed_optimizer": True})}
KINDS = ("ffn", "stem")


def _removal(kind: str, arch, r: int):
    from pap.pruning.select import Removal

    if kind == "ffn":  # channel r of every layer (at TP=2 the rebalancing moves one channel per layer)
        return Removal("ffn", tuple(r for _ in range(arch.num_layers)), 0.0, ())
    return Removal("stem", (r,), 0.0, ())  # a hidden channel: a column or row of every tensor


def measure(size: str, layout: str, kind: str, rounds: int, steps: int, out: str) -> None:
    """Runs on every rank of its own torchrun: writes this rank's figures to `out`/rank<r>.json."""
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(REPO))
    import torch.distributed as dist

    from data_prep.synthetic import write_arithmetic_dataset
    from pap.config import config_from_dict
    from pap.prune_hook import remove_groups
    from pap.trainer import Trainer

    rank = int(os.environ.get("RANK", "0"))
    with tempfile.TemporaryDirectory() as tmp:
        data = f"{out}/data_text_document"
        if rank == 0:
            write_arithmetic_dataset(data, 200, 4096)
        cfg_parallel = LAYOUTS[layout][1]
        trainer = None
        cfg = config_from_dict({
            "model": {"vocab_size": 4096, "params_dtype": "bf16", **SIZES[size]},
            "parallel": {"tp": 1, "pp": 1, **cfg_parallel},
            "train": {"iters": 1000, "micro_batch_size": 1, "global_batch_size": 2, "warmup_iters": 1,
                      "eval_iters": 0},
            "data": {"blend": [data], "seq_length": 128, "split": "100,0,0"},
            "checkpoint": {"dir": None}})
        if rank != 0:
            while not Path(f"{data}.idx").is_file():
                time.sleep(0.2)
            time.sleep(0.5)
        trainer = Trainer(cfg)
        step_times = [trainer.train_step().seconds for _ in range(steps)][1:]
        peak_training = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        round_times, sent = [], []
        for r in range(rounds):
            dist.barrier()
            start = time.time()
            stats = remove_groups(trainer, [_removal(kind, trainer.arch, r)]).stats
            round_times.append(time.time() - start)
            sent.append(stats.bytes_sent)
            trainer.train_step()
        peak_rounds = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        Path(f"{out}/rank{rank}.json").write_text(json.dumps({
            "params": trainer.arch.num_params(), "step": statistics.median(step_times),
            "round": statistics.median(round_times), "peak_training": peak_training,
            "peak_rounds": peak_rounds, "sent": max(sent), "copied": stats.bytes_copied}))
        trainer.close()


def run_one(size: str, layout: str, kind: str, rounds: int, steps: int) -> dict:
    """One size and layout in a fresh torchrun; the worst rank's figures."""
    world = LAYOUTS[layout][0]
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // world))}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
                        "--master-port", str(29700 + hash((size, layout, kind)) % 200), __file__,
                        "--one", size, "--layout", layout, "--kind", kind, "--rounds", str(rounds),
                        "--steps", str(steps), "--out", out], cwd=REPO, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    worst = {key: max(r[key] for r in ranks) for key in ranks[0]}
    worst["peak_ratio"] = max(r["peak_rounds"] / r["peak_training"] for r in ranks)
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["5M", "30M", "110M", "350M"], choices=list(SIZES))
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--kind", default="ffn", choices=KINDS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one size, on each torchrun rank
    parser.add_argument("--layout", default="tp1", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure(args.one, args.layout, args.kind, args.rounds, args.steps, args.out)
        return 0
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}, bf16 with fp32 masters, micro batch 1, seq 128, "
          f"{args.kind} rounds; worst rank")
    print("| layout | size | parameters | step (s) | round (s) | round / step | bytes sent per round | "
          "bytes copied per round | peak RSS during rounds / training |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layout in args.layouts:
        rows = []
        for size in args.sizes:
            r = run_one(size, layout, args.kind, args.rounds, args.steps)
            rows.append((size, r))
            print(f"| {layout} | {size} | {r['params']:,} | {r['step']:.3f} | {r['round']:.3f} | "
                  f"{r['round'] / r['step']:.2f} | {r['sent']:,} | {r['copied']:,} | {r['peak_ratio']:.2f} |",
                  flush=True)
        if len(rows) >= 2:
            xs = [math.log(r["params"]) for _, r in rows]
            ys = [math.log(r["round"]) for _, r in rows]
            mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
            print(f"| {layout} | growth | | | params^{slope:.2f} ({rows[0][0]}..{rows[-1][0]}) | | | | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
