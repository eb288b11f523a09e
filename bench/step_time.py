"""Seconds per training step of a config at several parallel layouts (CPU or GPU).

    python bench/step_time.py --config configs/tiny.yaml --iters 30 --layouts 1x1 2x1 2x2

Each layout `TPxPP` runs `pap.train` with tp*pp processes (torchrun for more than one)
for `--iters` steps without checkpoints, and reports the median `iteration-time` of the
steps after the first `--skip` from the run's metrics file. Prints one Markdown table row
per layout, ready for docs/BENCHMARKS.md.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(config: str, tp: int, pp: int, iters: int, skip: int, extra) -> dict:
    nproc = tp * pp
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics.jsonl"
        overrides = [f"parallel.tp={tp}", f"parallel.pp={pp}", f"train.iters={iters}", "train.warmup_iters=1",
                     "train.eval_iters=0", "checkpoint.dir=", f"log.metrics_file={metrics}",
                     f"log.interval={iters}", *extra]
        launcher = [sys.executable, "-m", "pap.train"] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "-m", "pap.train"]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        subprocess.run([*launcher, "--config", config, *overrides], cwd=REPO, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        times = [json.loads(line)["iteration-time"] for line in metrics.read_text().splitlines()]
    steady = times[skip:]
    return {"median": statistics.median(steady), "min": min(steady), "max": max(steady), "n": len(steady)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--skip", type=int, default=5, help="leading steps left out (warm-up)")
    parser.add_argument("--layouts", nargs="+", default=["1x1", "2x1"], help="TPxPP")
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, config {args.config}")
    print("| layout | processes | s/step (median) | min | max | steps |")
    print("|---|---|---|---|---|---|")
    for layout in args.layouts:
        tp, pp = (int(x) for x in layout.lower().split("x"))
        r = measure(args.config, tp, pp, args.iters, args.skip, args.overrides)
        print(f"| TP={tp} PP={pp} | {tp * pp} | {r['median']:.3f} | {r['min']:.3f} | {r['max']:.3f} | {r['n']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
