"""What the distillation teacher costs a training step, at several model sizes (one process).

    python bench/distill_cost.py --hidden 128 256 512 --pairs 3

For each size a source model (4 layers, hidden H, FFN 4H, vocabulary --vocab) is saved,
then a student starting from it trains with and without `distill:` (teacher = the source:
the first step of a pruning run, the teacher's largest share of the step is later, when
the student has shrunk). The two runs alternate `--pairs` times (ABAB...), each timing
`--steps` steps after one warm-up step; the table gives the median step time of each, the
ratio per pair (median, min, max), the teacher's forward FLOPs as a share of the step's
FLOPs (`Arch.flops_per_token`), and the teacher's memory on the rank: its weights (the
built module's parameters) and, per micro batch, its logits with the fp32 target and
student softmax the KL keeps for backward; and each run's peak resident memory (its own
process), whose difference is what the teacher cost in all.

    python bench/distill_cost.py --recipe configs/recipes/pap_469m_distill.yaml \
        --pruning-tokens 72.1e9 --continued-tokens 500e9

prints what those figures mean for a recipe, from its shapes (no run): the teacher's
forward FLOPs against the student's training FLOPs at the start of pruning, at the target,
and over the whole run (the student shrinking linearly in tokens over the pruning stage;
a student's FLOPs per token taken as proportional to its parameters, attention included
at the source's share), and its memory per GPU at the recipe's layout and micro batch.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 2 ** 30


def _model(hidden: int, vocab: int) -> dict:
    return {"vocab_size": vocab, "hidden_size": hidden, "num_layers": 4, "num_attention_heads": max(hidden // 64, 2),
            "num_query_groups": max(hidden // 64, 2), "ffn_hidden_size": 4 * hidden, "make_vocab_size_divisible_by": 128}


def _config(data: str, hidden: int, vocab: int, seq: int, **sections) -> dict:
    cfg = {"model": _model(hidden, vocab), "parallel": {"tp": 1, "pp": 1},
           "train": {"iters": 1000, "micro_batch_size": 4, "global_batch_size": 8, "lr": 1e-3, "min_lr": 1e-4,
                     "warmup_iters": 1, "eval_interval": 0, "eval_iters": 0},
           "data": {"blend": [data], "seq_length": seq, "split": "100,0,0"}, "log": {"interval": 1000},
           "checkpoint": {"dir": None}}
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def _steps(cfg_dict: dict, steps: int) -> dict:
    """Seconds per step over `steps` steps after one warm-up step (one process)."""
    from pap.config import config_from_dict
    from pap.trainer import Trainer

    trainer = Trainer(config_from_dict(cfg_dict))
    trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    seconds = (time.perf_counter() - start) / steps
    distill = trainer.callback("distill")
    import resource

    # this process's peak resident memory (a fresh process per run: spawn)
    out = {"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if distill is not None:
        out.update(weights=distill.teacher.weight_bytes(), params=distill.teacher.arch.num_params(),
                   teacher_flops=distill.extra_flops_per_token(trainer),
                   student_flops=trainer.arch.flops_per_token(cfg_dict["data"]["seq_length"]))
    trainer.close()
    return out


def _save_source(cfg_dict: dict) -> None:
    from pap.config import config_from_dict
    from pap.trainer import Trainer

    trainer = Trainer(config_from_dict(cfg_dict))
    trainer.save()
    trainer.close()


def cpu_model() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def recipe_cost(path: str, pruning_tokens: float, continued_tokens: float) -> None:
    """The teacher's cost at a recipe's scale, from its config (see the module docstring)."""
    from pap.arch import Arch
    from pap.config import load_config

    cfg = load_config(path)
    teacher = Arch.from_model_config(cfg.model)
    seq, params = cfg.data.seq_length, teacher.num_params()
    target = cfg.prune.target_params if cfg.prune.target_params > 1 else cfg.prune.target_params * params
    teacher_forward = teacher.flops_per_token(seq) / 3

    def student_training(size: float) -> float:
        return teacher.flops_per_token(seq) * size / params

    average = (params + target) / 2
    student = student_training(average) * pruning_tokens + student_training(target) * continued_tokens
    taught = {"both": pruning_tokens + continued_tokens, "pruning": pruning_tokens,
              "after": continued_tokens}[cfg.distill.during]
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    weights = params * (2 if cfg.model.params_dtype == "bf16" else 4) / (tp * pp)
    logits = cfg.train.micro_batch_size * seq * teacher.padded_vocab_size // tp * (
        (2 if cfg.model.params_dtype == "bf16" else 4) + 8)
    print(f"# {path}: teacher {params:,} parameters, target {int(target):,}; TP={tp} PP={pp}, micro batch "
          f"{cfg.train.micro_batch_size} x {seq}; pruning stage {pruning_tokens:.3g} tokens, continued "
          f"{continued_tokens:.3g}; distill.during={cfg.distill.during}")
    print("| quantity | value |")
    print("|---|---|")
    print(f"| teacher forward / student training FLOPs, start of pruning | {teacher_forward / student_training(params):.2f} |")
    print(f"| teacher forward / student training FLOPs, at the target | {teacher_forward / student_training(target):.2f} |")
    print(f"| whole run's FLOPs, distilled / not | {(student + teacher_forward * taught) / student:.2f} |")
    print(f"| teacher weights per GPU | {weights / GIB:.2f} GiB |")
    print(f"| teacher logits + fp32 target + student softmax per micro batch (last stage) | {logits / GIB:.2f} GiB |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", help="print a recipe's teacher cost from its shapes instead of measuring")
    parser.add_argument("--pruning-tokens", type=float, default=72.1e9)
    parser.add_argument("--continued-tokens", type=float, default=500e9)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    if args.recipe:
        recipe_cost(args.recipe, args.pruning_tokens, args.continued_tokens)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import warnings

    warnings.filterwarnings("ignore")
    from data_prep.synthetic import write_arithmetic_dataset
    from tests.helpers import run_distributed

    print(f"# {platform.node()}: {os.cpu_count()} cores, {cpu_model()}, one process, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; 4 layers, FFN 4H, vocabulary {args.vocab}, "
          f"micro batch 4 x {args.seq} tokens, global batch 8; fp32")
    print("| hidden | teacher params | s/step plain | s/step distilled | ratio (median, min-max) | "
          "teacher FLOPs share | teacher weights | logits per micro batch | peak RSS plain | distilled - plain |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        data = write_arithmetic_dataset(f"{tmp}/data_text_document", num_docs=2000, vocab=args.vocab,
                                        lengths=(50, 400))
        for hidden in args.hidden:
            source = f"{tmp}/source_{hidden}"
            run_distributed(_save_source, 1, _config(data, hidden, args.vocab, args.seq, checkpoint={"dir": source}))
            plain_cfg = _config(data, hidden, args.vocab, args.seq, checkpoint={"dir": None, "init_from": source})
            distill_cfg = {**plain_cfg, "distill": {"enabled": True, "alpha": 0.5}}
            plain, distilled = [], []
            for _ in range(args.pairs):
                plain.append(run_distributed(_steps, 1, plain_cfg, args.steps)[0])
                distilled.append(run_distributed(_steps, 1, distill_cfg, args.steps)[0])
            ratios = [d["seconds"] / p["seconds"] for p, d in zip(plain, distilled)]
            d = distilled[0]
            share = d["teacher_flops"] / (d["teacher_flops"] + d["student_flops"])
            logits = 4 * args.seq * (-(-args.vocab // 128) * 128) * (4 + 8)
            print(f"| {hidden} | {d['params']:,} | {statistics.median(p['seconds'] for p in plain):.3f} | "
                  f"{statistics.median(x['seconds'] for x in distilled):.3f} | {statistics.median(ratios):.2f} "
                  f"({min(ratios):.2f}-{max(ratios):.2f}) | {share:.1%} | {d['weights'] / GIB * 1024:.1f} MiB | "
                  f"{logits / GIB * 1024:.1f} MiB | {statistics.median(p['peak_rss'] for p in plain) / GIB * 1024:.0f} MiB | "
                  f"{(statistics.median(x['peak_rss'] for x in distilled) - statistics.median(p['peak_rss'] for p in plain)) / GIB * 1024:.0f} MiB |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
