"""Cost of pruning on the CPU: saliency accumulation, one removal, and the pruned model's speed.

    python bench/prune_overhead.py [--config configs/tiny.yaml] [--steps 20] [--removals 8]
                                   [--obs] [key=value ...]

One process (TP=1). Measures, as medians over `--steps` steps after two warm-up steps:
1. step time without pruning vs with saliency accumulation every step (goal: within 5%);
2. the time of one removal event (gather, prune, rebuild, scatter) in step times;
3. the step time of the model after `--removals` removals vs a freshly built model of
   the same shape (goal: within 5%: nothing masked or padded is left behind).

With `--obs`, EfficientLLM-B's costs as well (`prune.update: obs`): the step time with the
layer-input Hessians accumulated every step, the memory of the Hessians (at TP=1 one rank
owns them all), and the time of the OBS update of one round removing one FFN channel,
one head or one hidden channel (median of 3 each, without the cut). `key=value` arguments
override the config (e.g. the model shape).
"""

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def median_step(trainer, steps: int) -> float:
    for _ in range(2):
        trainer.train_step()
    return statistics.median(trainer.train_step().seconds for _ in range(steps))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs/tiny.yaml"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--removals", type=int, default=8)
    parser.add_argument("--obs", action="store_true", help="also measure the OBS update (EfficientLLM-B)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.chdir(REPO)
    if not (REPO / "data/embedded/stdlib_text_document.meta.json").is_file():
        from data_prep.embedded_corpus import make

        make("data/embedded")
    import torch

    from pap.config import load_config
    from pap.pruning.select import Removal
    from pap.prune_hook import remove_groups
    from pap.trainer import Trainer

    base = ["parallel.tp=1", "parallel.pp=1", "checkpoint.dir=", "train.iters=1000", "train.eval_iters=0",
            *args.overrides]
    plain = Trainer(load_config(args.config, base))
    t_plain = median_step(plain, args.steps)
    pruning = Trainer(load_config(args.config, base + ["prune.enabled=true", "prune.grad_steps=100000",
                                                       "prune.target_params=0.1"]))
    t_saliency = median_step(pruning, args.steps)

    removal_times = []
    kinds = ["ffn", "attn", "stem"]
    for i in range(args.removals):
        kind = kinds[i % 3]
        arch = pruning.arch
        index = {"ffn": tuple(0 for _ in arch.ffn), "attn": tuple(0 for _ in arch.ffn), "stem": (0,)}[kind]
        start = time.time()
        remove_groups(pruning, [Removal(kind, index, 0.0, ())])
        removal_times.append(time.time() - start)
    obs_rows = measure_obs(args, base, t_plain) if args.obs else []
    pruned_arch = pruning.arch
    pruning.callbacks.clear()  # compare the pruned model's own speed
    t_pruned = median_step(pruning, args.steps)
    fresh = Trainer(load_config(args.config, base))
    fresh.rebuild(pruned_arch, draw=True)
    t_fresh = median_step(fresh, args.steps)

    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d')}")
    print(f"# config {args.config} at TP=1; {plain.arch.num_params():,} -> {pruned_arch.num_params():,} params "
          f"after {args.removals} removals (ffn, attn, stem in turn)")
    print("| measure | value |")
    print("|---|---|")
    print(f"| step, no pruning (s) | {t_plain:.3f} |")
    print(f"| step, saliency accumulated (s) | {t_saliency:.3f} ({(t_saliency / t_plain - 1) * 100:+.1f}%) |")
    med = statistics.median(removal_times)
    print(f"| one removal event, median (s) | {med:.3f} ({med / t_plain:.2f} steps) |")
    print(f"| step, pruned model (s) | {t_pruned:.3f} |")
    print(f"| step, fresh model of the pruned shape (s) | {t_fresh:.3f} ({(t_pruned / t_fresh - 1) * 100:+.1f}% "
          f"pruned vs fresh) |")
    for row in obs_rows:
        print(row)
    return 0


def measure_obs(args, base, t_plain) -> list:
    """Rows of the table for `prune.update: obs`."""
    from pap.config import load_config
    from pap.pruning.round_plan import RoundPlan
    from pap.pruning.select import Removal
    from pap.sharding.obs_round import apply_obs
    from pap.sharding.training_state import TrainingState
    from pap.trainer import Trainer

    trainer = Trainer(load_config(args.config, base + ["prune.enabled=true", "prune.grad_steps=100000",
                                                       "prune.target_params=0.1", "prune.update=obs"]))
    t_step = median_step(trainer, args.steps)
    window = trainer.callback("pruning").hessians
    arch = trainer.arch
    rows = [f"| step, saliency + Hessians accumulated (s) | {t_step:.3f} ({(t_step / t_plain - 1) * 100:+.1f}% "
            f"vs no pruning; {window.per_sequence_rows()} sampled tokens per step) |",
            f"| Hessians held (MB) | {window.owned_bytes() / 2**20:.1f} ({len(window.hessians)} blocks, float64) |"]
    for kind in ("ffn", "attn", "stem"):
        index = (0,) if kind == "stem" else tuple(0 for _ in arch.ffn)
        removal = Removal(kind, index, 0.0, ())
        times = []
        for _ in range(3):
            start = time.time()
            state = TrainingState(trainer.model.module, trainer.optimizer)
            apply_obs(trainer.model, state, window, RoundPlan.of(arch, [removal]), trainer.cfg.prune.hessian_damp)
            times.append(time.time() - start)
        median = statistics.median(times)
        rows.append(f"| OBS update of one {kind} round (s) | {median:.3f} ({median / t_plain:.2f} steps) |")
    trainer.close()
    return rows


if __name__ == "__main__":
    sys.exit(main())
