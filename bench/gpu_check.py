"""A self-contained check of the real-dtype path on one GPU: a few minutes, one `CHECK` line each.

    python bench/gpu_check.py              # on a GPU machine (make gpu-check)
    python bench/gpu_check.py --device cpu # the same checks on CPU at toy scale (tests run this)

Prints `CHECK <name> PASS|FAIL <details>` lines and exits 1 if any check failed:

* versions: torch, CUDA, GPU, megatron-core, Transformer Engine, flash-attn, apex, and the
  layer classes and attention backend a pap model is built with;
* init_from: a bf16 run with the distributed optimizer started from an fp32 checkpoint
  keeps the source at step 1 (masters equal to the source, moved by about lr);
* natural_rounds_<optimizer>: pruning rounds chosen by saliency in bf16 run, with the
  plain and the distributed optimizer, and the loss stays finite;
* forced_<kind>_<optimizer>: a head, an FFN channel and a hidden channel removed by hand:
  surviving fp32 masters and Adam moments bit-identical, Adam's step unchanged;
* freed: after many rounds one model/DDP/optimizer is alive and device memory is back to
  what a model of that size holds;
* resume: save, resume in a fresh trainer, the next loss identical;
* step_time: seconds per step, tokens/s and TFLOP/s of SmolLM-1.7B's layer shape (hidden
  2048, FFN 8192, 32 heads, vocab 49152; fewer layers) in bf16, with MFU against the
  GPU's dense bf16 peak where known.

One process (NCCL cannot put two ranks on one GPU), so TP/PP/DP are 1: the checks cover
the dtype, optimizer and device paths; layout invariance is covered by the CPU test suite.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Dense bf16 peak TFLOP/s by device-name fragment (vendor datasheets, SXM parts).
PEAK_BF16 = {"H200": 989.0, "H100": 989.0, "A800": 312.0, "A100": 312.0}

RESULTS = []


def report(name: str, ok: bool, details: str = "") -> None:
    RESULTS.append(ok)
    print(f"CHECK {name} {'PASS' if ok else 'FAIL'} {details}".rstrip(), flush=True)


def check(name):
    """Run the decorated function as one check; an exception is a FAIL with its last line."""
    def wrap(fn):
        def run(*args, suffix: str = ""):
            try:
                ok, details = fn(*args)
            except Exception as exc:  # a check that crashes fails, the others still run
                traceback.print_exc()
                ok, details = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            report(f"{name}_{suffix}" if suffix else name, ok, details)
        return run
    return wrap


class Setup:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.small = {"vocab_size": 512, "hidden_size": 256, "num_layers": 4, "num_attention_heads": 8,
                      "num_query_groups": 4, "ffn_hidden_size": 1024, "make_vocab_size_divisible_by": 128}
        from data_prep.synthetic import write_arithmetic_dataset

        self.data = {vocab: write_arithmetic_dataset(str(workdir / f"vocab{vocab}_text_document"), 400, vocab,
                                                     lengths=(50, 600)) for vocab in (512, 49152)}

    def config(self, model=None, distopt=False, dtype="bf16", seq=128, **sections):
        from pap.config import config_from_dict

        cfg = {"model": {**(model or self.small), "params_dtype": dtype},
               "parallel": {"tp": 1, "pp": 1, "distributed_optimizer": distopt},
               "train": {"iters": 1000, "micro_batch_size": 2, "global_batch_size": 4, "lr": 1e-3, "min_lr": 1e-4,
                         "warmup_iters": 1, "eval_iters": 0},
               "data": {"blend": [self.data[(model or self.small)["vocab_size"]]], "seq_length": seq, "split": "100,0,0"},
               "log": {"interval": 1000}, "checkpoint": {"dir": None}}
        for section, values in sections.items():
            cfg.setdefault(section, {}).update(values)
        return config_from_dict(cfg)


def training_state(trainer):
    from pap.sharding.training_state import TrainingState

    return TrainingState(trainer.model.module, trainer.optimizer)


@check("versions")
def check_versions(setup):
    import importlib.metadata as md

    import torch

    from pap.trainer import Trainer

    found = [f"torch {torch.__version__}", f"cuda {torch.version.cuda}",
             f"gpu {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}"]
    for package in ("megatron-core", "transformer-engine", "transformer_engine", "flash-attn", "flash_attn", "apex"):
        try:
            found.append(f"{package} {md.version(package)}")
        except md.PackageNotFoundError:
            pass
    trainer = Trainer(setup.config())
    layer = trainer.model.module.decoder.layers[0]
    attention = layer.self_attention
    classes = {"linear_qkv": type(attention.linear_qkv).__name__,
               "core_attention": type(attention.core_attention).__name__,
               "linear_fc1": type(layer.mlp.linear_fc1).__name__,
               "optimizer": type(trainer.optimizer.chained_optimizers[0].optimizer).__name__
               if hasattr(trainer.optimizer, "chained_optimizers") else type(trainer.optimizer).__name__}
    backend = {k: v for k, v in os.environ.items() if k.startswith(("NVTE_", "CUDA_DEVICE_MAX"))}
    trainer.close()
    return True, "; ".join(found) + f" | layers {classes} | attention env {backend or 'defaults'}"


@check("init_from")
def check_init_from(setup):
    import torch

    from pap.trainer import Trainer

    source_dir = setup.workdir / "source"
    source = Trainer(setup.config(dtype="fp32", train={"seed": 7}, checkpoint={"dir": str(source_dir)}))
    source.save()
    expected = training_state(source).gather(("param",))["param"]
    source.close()
    cfg = setup.config(distopt=True, train={"lr": 1e-4, "warmup_iters": 0, "seed": 1},
                       checkpoint={"init_from": str(source_dir)})
    trainer = Trainer(cfg)
    start = training_state(trainer).gather(("master",))["master"]
    exact = all(torch.equal(start[n], v) for n, v in expected.items())
    lr = trainer.optimizer.param_groups[0]["lr"]
    trainer.train_step()
    after = training_state(trainer).gather(("master",))["master"]
    moved = max((after[n] - v).abs().max().item() for n, v in expected.items())
    trainer.close()
    return exact and 0 < moved <= 1.2 * lr, f"masters equal the fp32 source: {exact}; moved {moved:.2e} (lr {lr:.1e})"


@check("natural_rounds")
def check_natural_rounds(setup, distopt):
    import math

    from pap.trainer import Trainer

    cfg = setup.config(distopt=distopt, prune={"enabled": True, "target_params": 0.7, "grad_steps": 2,
                                               "prune_steps": 1, "min_kv_heads": 2})
    trainer = Trainer(cfg)
    losses = [trainer.train_step().loss for _ in range(20)]
    kinds = sorted({r.kind for r in trainer.callback("pruning").removals})
    rounds = len(trainer.callback("pruning").removals)
    trainer.close()
    return rounds >= 5 and all(map(math.isfinite, losses)), \
        f"{rounds} removals ({', '.join(kinds)}), loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@check("forced")
def check_forced(setup, distopt):
    import torch

    from pap.pruning.remove import prune_state
    from pap.pruning.select import Removal
    from pap.prune_hook import remove_groups
    from pap.sharding.training_state import OPTIMIZER_FIELDS
    from pap.trainer import Trainer

    trainer = Trainer(setup.config(distopt=distopt))
    for _ in range(3):
        trainer.train_step()
    layers = trainer.arch.num_layers
    details = []
    ok = True
    for kind, indices in (("attn", tuple(range(layers))), ("ffn", tuple(range(5, 5 + layers))), ("stem", (3,))):
        removal = Removal(kind, indices, 0.0, ())
        arch = trainer.arch
        before = training_state(trainer).gather(OPTIMIZER_FIELDS)
        step = training_state(trainer).step()
        remove_groups(trainer, [removal])
        after = training_state(trainer).gather(OPTIMIZER_FIELDS)
        expected = {f: prune_state(t, arch, removal) for f, t in before.items()}
        same = all(torch.equal(after[f][n], v) for f, tensors in expected.items() for n, v in tensors.items())
        step_kept = training_state(trainer).step() == step
        loss = trainer.train_step().loss
        ok = ok and same and step_kept and loss == loss
        details.append(f"{kind}: state {'bit-identical' if same else 'CHANGED'}, step {step:.0f}"
                       f"{'' if step_kept else ' LOST'}")
    trainer.close()
    return ok, "; ".join(details)


@check("freed")
def check_freed(setup, distopt):
    import torch
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.models.gpt import GPTModel

    from pap.trainer import Trainer

    gc.collect()
    before = sum(isinstance(o, (DistributedDataParallel, GPTModel)) for o in gc.get_objects())
    cfg = setup.config(distopt=distopt, prune={"enabled": True, "target_params": 0.3, "grad_steps": 1,
                                               "prune_steps": 1, "metric": "first"})
    trainer = Trainer(cfg)
    trainer.train_step()
    on_gpu = torch.cuda.is_available()
    first = torch.cuda.memory_allocated() if on_gpu else 0
    while len(trainer.callback("pruning").removals) < 30:
        trainer.train_step()
    gc.collect()
    live = sum(isinstance(o, (DistributedDataParallel, GPTModel)) for o in gc.get_objects()) - before
    memory = torch.cuda.memory_allocated() if on_gpu else 0
    shrink = trainer.arch.num_params() / trainer.source_arch.num_params()
    trainer.close()
    # A leak keeps a whole model, its buffers and optimizer per round: 30 rounds would
    # multiply the footprint; the pruned model should need no more than the first one.
    ok = live == 2 and (not on_gpu or memory <= first * 1.05)
    return ok, (f"live model+DDP objects {live} (2 expected); device memory after 30 rounds "
                f"{memory / 2**20:.1f} MiB vs {first / 2**20:.1f} MiB after step 1; model at {shrink:.2f}x")


@check("resume")
def check_resume(setup, distopt):
    from pap.trainer import Trainer

    run_dir = setup.workdir / f"resume_{distopt}"
    cfg = setup.config(distopt=distopt, checkpoint={"dir": str(run_dir)},
                       prune={"enabled": True, "target_params": 0.9, "grad_steps": 2, "prune_steps": 1})
    trainer = Trainer(cfg)
    for _ in range(3):
        trainer.train_step()
    trainer.save()
    expected = [trainer.train_step().loss for _ in range(3)]
    trainer.close()
    resumed = Trainer(cfg)
    got = [resumed.train_step().loss for _ in range(3)]
    resumed.close()
    return got == expected, f"next losses {expected} vs resumed {got}"


@check("step_time")
def check_step_time(setup, layers, seq, iters):
    import torch

    from pap.trainer import Trainer

    model = {"vocab_size": 49152, "hidden_size": 2048, "num_layers": layers, "num_attention_heads": 32,
             "num_query_groups": 32, "ffn_hidden_size": 8192, "tie_embeddings": True,
             "make_vocab_size_divisible_by": 128}
    cfg = setup.config(model=model, seq=seq, train={"micro_batch_size": 1, "global_batch_size": 4})
    trainer = Trainer(cfg)
    trainer.train_step()  # warm-up: allocations, kernel selection
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.time()
    for _ in range(iters):
        trainer.train_step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = (time.time() - start) / iters
    tokens = cfg.train.global_batch_size * seq
    tflops = trainer.arch.flops_per_token(seq) * tokens / seconds / 1e12
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    mfu = f", MFU {100 * tflops / peak:.1f}% of {peak:.0f}" if peak else ""
    params = trainer.arch.num_params()
    trainer.close()
    return True, (f"{layers} layers of SmolLM-1.7B's shape ({params / 1e6:.0f}M params), seq {seq}, "
                  f"4 sequences/step: {seconds:.3f} s/step, {tokens / seconds:,.0f} tok/s, {tflops:.1f} TFLOP/s{mfu}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto",
                        help="cpu: the same checks at toy scale without a GPU")
    parser.add_argument("--layers", type=int, default=4, help="layers of the SmolLM-1.7B-shaped step-time model")
    parser.add_argument("--iters", type=int, default=10, help="timed steps")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # megatron's and torch's deprecation notes would bury the CHECK lines
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    if args.device == "auto" and not torch.cuda.is_available():
        print("gpu_check: no GPU visible (run with --device cpu for the toy-scale checks)", file=sys.stderr)
        return 2
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    from pap.distributed import init_distributed

    init_distributed(1, 1, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(args, Path(tmp))
        check_versions(setup)
        check_init_from(setup)
        for distopt in (False, True):
            suffix = "distopt" if distopt else "plain"
            for fn in (check_natural_rounds, check_forced, check_freed, check_resume):
                fn(setup, distopt, suffix=suffix)
        on_gpu = torch.cuda.is_available()
        check_step_time(setup, args.layers if on_gpu else 1, 2048 if on_gpu else 128, args.iters if on_gpu else 2)
    failed = RESULTS.count(False)
    print(f"gpu_check: {len(RESULTS) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
