"""How a pruning round's cost grows with the model: round time and peak memory vs step time.

    python bench/round_scaling.py [--sizes 5M 30M 110M] [--rounds 3]

Each size runs in a fresh process at TP=1 (one process, CPU or one GPU), bf16 with fp32
masters and the distributed optimizer off: a few training steps, then `--rounds` forced
FFN removals (one channel from every layer), each timed on its own. Prints one Markdown
row per size: parameters, median step time, median round time, the round in steps, and
the process's peak RSS after the steps and after the rounds. The last line fits the
growth exponent of round time in parameters (round time ~ params^e).

Sizes: `5M` is configs/tiny.yaml's shape; `30M` hidden 512, FFN 2048, 8 layers; `110M` and
`350M` are SmolLM-1.7B's layer shape (hidden 2048, FFN 8192, 32 heads) with 2 and 6
layers; vocab 4096 untied throughout.
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
}


def measure(size: str, rounds: int, steps: int) -> dict:
    """Runs in its own process: returns the figures of one size."""
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(REPO))
    from data_prep.synthetic import write_arithmetic_dataset
    from pap.config import config_from_dict
    from pap.pruning.select import Removal
    from pap.sharding.reshard import apply_removal
    from pap.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        data = write_arithmetic_dataset(f"{tmp}/data_text_document", 200, 4096)
        cfg = config_from_dict({
            "model": {"vocab_size": 4096, "params_dtype": "bf16", **SIZES[size]},
            "train": {"iters": 1000, "micro_batch_size": 1, "global_batch_size": 2, "warmup_iters": 1,
                      "eval_iters": 0},
            "data": {"blend": [data], "seq_length": 128, "split": "100,0,0"},
            "checkpoint": {"dir": None}})
        trainer = Trainer(cfg)
        step_times = [trainer.train_step().seconds for _ in range(steps)][1:]
        peak_training = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        round_times = []
        for r in range(rounds):
            start = time.time()
            apply_removal(trainer, Removal("ffn", tuple(r for _ in range(trainer.arch.num_layers)), 0.0, ()))
            round_times.append(time.time() - start)
            trainer.train_step()
        peak_rounds = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"size": size, "params": trainer.arch.num_params(), "step": statistics.median(step_times),
                "round": statistics.median(round_times), "peak_training": peak_training, "peak_rounds": peak_rounds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["5M", "30M", "110M"], choices=sorted(SIZES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one size in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.rounds, args.steps)))
        return 0
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}, TP=1, bf16 with fp32 masters, plain optimizer")
    print("| size | parameters | step (s) | round (s) | round / step | peak RSS after steps (GB) | "
          "peak RSS after rounds (GB) |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for size in args.sizes:
        done = subprocess.run([sys.executable, __file__, "--one", size, "--rounds", str(args.rounds),
                               "--steps", str(args.steps)], cwd=REPO, env=env, capture_output=True, text=True,
                              check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"| {size} | {r['params']:,} | {r['step']:.3f} | {r['round']:.3f} | {r['round'] / r['step']:.2f} | "
              f"{r['peak_training'] / 1e9:.2f} | {r['peak_rounds'] / 1e9:.2f} |", flush=True)
    if len(rows) >= 2:
        xs = [math.log(r["params"]) for r in rows]
        ys = [math.log(r["round"]) for r in rows]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
        print(f"\nround time grows as params^{slope:.2f} over {rows[0]['size']}..{rows[-1]['size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
