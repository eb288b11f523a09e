"""A self-contained check of the real-dtype path on one GPU: a few minutes, one `CHECK` line each.

    python bench/gpu_check.py              # on a GPU machine (make gpu-check)
    python bench/gpu_check.py --device cpu # the same checks on CPU at toy scale (tests run this)

Prints `CHECK <name> PASS|FAIL <details>` lines and exits 1 if any check failed:

* versions: torch, CUDA, GPU, megatron-core, Transformer Engine, flash-attn, apex, and the
  layer classes and attention backend a pap model is built with; fails when megatron-core
  is not the pinned release, torch is outside megatron-core's range, or (on a GPU) the
  GPU stack is incomplete or Transformer Engine is outside megatron-core's range
  (`pap.env_check`);
* init_from: a bf16 run with the distributed optimizer started from an fp32 checkpoint
  keeps the source at step 1 (masters equal to the source, moved by about lr);
* natural_rounds_<optimizer>: pruning rounds chosen by saliency in bf16 run, with the
  plain and the distributed optimizer, and the loss stays finite;
* forced_<kind>_<optimizer>: a head, an FFN channel and a hidden channel removed by hand:
  surviving fp32 masters and Adam moments bit-identical, Adam's step unchanged;
* obs_rounds_<optimizer>: `prune.update: obs` rounds in bf16: every round's update lowers
  each kind's reconstruction error on the held-out sampled tokens below plain removal's;
* adaptive_<optimizer>, greedy_<optimizer>: `prune.layers: adaptive` / `greedy` rounds in
  bf16 leave layers of unequal widths, fewer parameters and a finite loss;
* freed: after many rounds one model/DDP/optimizer is alive, and the bytes held by live
  tensors (and on a GPU the allocator's) are no more than after the first step;
* resume: save, resume in a fresh trainer, the next loss identical;
* step_time: seconds per step, tokens/s and TFLOP/s of SmolLM-1.7B's layer shape (hidden
  2048, FFN 8192, 32 heads, vocab 49152; fewer layers) in bf16; on a GPU it fails below
  `--mfu-floor` (default 25%) of the GPU's dense bf16 peak, or when the peak is not known;
  on CPU (no meaningful floor) it fails on a non-finite loss or no progress.

The plain-optimizer checks run in this process (TP/PP/DP = 1). The distributed-optimizer
checks (`init_from` and the `_distopt` ones) run at DP = `--dp` in a `torchrun` of that many
processes, so the optimizer state is really split: 2 by default on CPU (gloo); on a GPU
machine min(2, GPUs) (NCCL cannot put two ranks on one GPU, so one GPU means DP = 1, which
the CHECK line says). Layout invariance in general is covered by the CPU test suite.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import subprocess
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


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _all_ranks_agree(ok: bool) -> bool:
    """A check passes only where it passed on every rank (DP > 1: each rank checks its share)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return ok
    flag = torch.tensor([1 if ok else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def report(name: str, ok: bool, details: str = "") -> None:
    ok = _all_ranks_agree(ok)
    RESULTS.append(ok)
    if _rank() == 0:
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
    def __init__(self, args, workdir: Path, write: bool = True):
        self.args = args
        self.workdir = workdir
        self.small = {"vocab_size": 512, "hidden_size": 256, "num_layers": 4, "num_attention_heads": 8,
                      "num_query_groups": 4, "ffn_hidden_size": 1024, "make_vocab_size_divisible_by": 128}
        from data_prep.synthetic import write_arithmetic_dataset

        # The DP processes read what the launching process wrote.
        self.data = {vocab: str(workdir / f"vocab{vocab}_text_document") for vocab in (512, 49152)}
        if write:
            for vocab, prefix in self.data.items():
                write_arithmetic_dataset(prefix, 400, vocab, lengths=(50, 600))

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
    wrong = version_problems(torch.cuda.is_available())
    return not wrong, ("; ".join(found) + f" | layers {classes} | attention env {backend or 'defaults'}"
                       + (f" | OUTSIDE THE SUPPORTED RANGES: {' / '.join(wrong)}" if wrong else ""))


def version_problems(on_gpu: bool) -> list:
    """What is outside the supported versions, one sentence each: megatron-core must be the
    release setup.py pins, torch inside megatron-core's declared range, and on a GPU the
    stack `pap.env_check --gpu-stack` requires (Transformer Engine in megatron-core's range,
    flash-attn, apex, a CUDA torch)."""
    import importlib.metadata as md

    import torch

    from pap import env_check

    wrong = []
    pinned = re_pin(REPO / "setup.py")
    if md.version("megatron-core") != pinned:
        wrong.append(f"megatron-core {md.version('megatron-core')} is not the pinned {pinned}")
    torch_range = env_check.megatron_requirement("torch")
    if not env_check._fits(torch.__version__, torch_range):
        wrong.append(f"torch {torch.__version__} is outside megatron-core's range {torch_range}")
    if on_gpu:
        wrong += env_check.problems(gpu_stack=True)
    return wrong


def re_pin(setup_py: Path) -> str:
    """The megatron-core version setup.py pins (`MEGATRON_CORE = "megatron-core==X"`)."""
    import re

    match = re.search(r'MEGATRON_CORE = "megatron-core==([^"]+)"', setup_py.read_text())
    return match.group(1) if match else "unknown"


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
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    return exact and 0 < moved <= 1.2 * lr, (f"DP={world}: masters equal the fp32 source: {exact}; "
                                             f"moved {moved:.2e} (lr {lr:.1e})")


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
    gc.collect()
    first, first_tensors = torch.cuda.memory_allocated() if on_gpu else 0, live_tensor_bytes()
    while len(trainer.callback("pruning").removals) < 30:
        trainer.train_step()
    gc.collect()
    live = sum(isinstance(o, (DistributedDataParallel, GPTModel)) for o in gc.get_objects()) - before
    memory, tensors = torch.cuda.memory_allocated() if on_gpu else 0, live_tensor_bytes()
    shrink = trainer.arch.num_params() / trainer.source_arch.num_params()
    trainer.close()
    # A leak keeps a whole model, its buffers and optimizer per round: 30 rounds would
    # multiply the footprint; the pruned model should need no more than the first one.
    # Live tensors are counted on every device (the CPU has no allocator statistics).
    ok = live == 2 and tensors <= first_tensors * 1.05 and (not on_gpu or memory <= first * 1.05)
    device = (f"; device memory {memory / 2**20:.1f} MiB vs {first / 2**20:.1f} MiB" if on_gpu else "")
    return ok, (f"live model+DDP objects {live} (2 expected); live tensors after 30 rounds {tensors / 2**20:.1f} MiB "
                f"vs {first_tensors / 2**20:.1f} MiB after step 1{device}; model at {shrink:.2f}x")


def live_tensor_bytes() -> int:
    """Bytes of the storages that live tensors reach (each storage once)."""
    import torch

    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type == "meta":
                continue
            storage = obj.untyped_storage()
        except Exception:  # tensor subclasses without storage
            continue
        key = (storage.device.type, storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def _run_rounds(trainer, steps: int) -> list:
    return [trainer.train_step().loss for _ in range(steps)]


@check("obs_rounds")
def check_obs_rounds(setup, distopt):
    """bf16 OBS rounds: each round's update beats plain removal on held-out sampled tokens.

    Every token of a 4-step window is sampled (1,792 fitted tokens for inputs 256 wide, 7 per
    width): with about as many tokens as the width the update fits noise and loses to plain
    removal out of sample (docs/BENCHMARKS.md), which would fail this check for that reason
    rather than for a wrong bf16 path."""
    from pap.trainer import Trainer

    model = {**setup.small, "ffn_hidden_size": 256}
    cfg = setup.config(model=model, distopt=distopt,
                       prune={"enabled": True, "target_params": 0.8, "grad_steps": 4, "prune_steps": 1,
                              "min_kv_heads": 2, "update": "obs", "hessian_tokens": 512})
    trainer = Trainer(cfg)
    hook = trainer.callback("pruning")
    seen, losses = [], []
    for _ in range(16):
        done = len(hook.removals)
        losses.append(trainer.train_step().loss)
        if len(hook.removals) > done and hook.obs is not None:
            seen.append(hook.obs)
    trainer.close()
    pairs = [(kind, stats.errors[kind], stats.plain_errors[kind]) for stats in seen for kind in stats.errors]
    ok = (len(seen) >= 2 and all(stats.held_out for stats in seen) and all(map(math.isfinite, losses))
          and all(math.isfinite(e) and 0 <= e < plain for _, e, plain in pairs))
    worst = max((e / plain for _, e, plain in pairs if plain > 0), default=float("nan"))
    return ok, (f"{len(seen)} rounds, held-out errors {'all' if all(s.held_out for s in seen) else 'NOT all'} "
                f"out of sample; worst update/plain error ratio {worst:.3f}; loss {losses[0]:.3f} -> {losses[-1]:.3f}")


def _layer_rounds(setup, distopt, layers: str):
    """A bf16 run whose removals spread over layers by `layers`; (ok, details)."""
    from pap.trainer import Trainer

    prune = {"enabled": True, "target_params": 0.7, "grad_steps": 2, "prune_steps": 1, "min_kv_heads": 2,
             "layers": layers}
    if layers == "adaptive":
        prune.update({"metric": "first", "increment": 0.05})
    trainer = Trainer(setup.config(distopt=distopt, prune=prune))
    losses = _run_rounds(trainer, 16)
    arch, source = trainer.arch, trainer.source_arch
    removals = len(trainer.callback("pruning").removals)
    trainer.close()
    uneven = len(set(arch.ffn)) > 1 or len({arch.num_heads(i) for i in range(arch.num_layers)}) > 1
    ok = removals > 0 and uneven and arch.num_params() < source.num_params() and all(map(math.isfinite, losses))
    return ok, (f"{removals} removals, FFN widths {sorted(set(arch.ffn))}, params "
                f"{arch.num_params() / source.num_params():.3f}x, loss {losses[0]:.3f} -> {losses[-1]:.3f}")


@check("adaptive")
def check_adaptive(setup, distopt):
    return _layer_rounds(setup, distopt, "adaptive")


@check("greedy")
def check_greedy(setup, distopt):
    return _layer_rounds(setup, distopt, "greedy")


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
    loss = trainer.train_step().loss
    tokens = cfg.train.global_batch_size * seq
    tflops = trainer.arch.flops_per_token(seq) * tokens / seconds / 1e12
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    params = trainer.arch.num_params()
    trainer.close()
    ok, verdict = step_time_verdict(torch.cuda.is_available(), tflops, peak, setup.args.mfu_floor, loss)
    return ok, (f"{layers} layers of SmolLM-1.7B's shape ({params / 1e6:.0f}M params), seq {seq}, "
                f"4 sequences/step: {seconds:.3f} s/step, {tokens / seconds:,.0f} tok/s, {tflops:.1f} TFLOP/s; "
                f"{verdict}")


def step_time_verdict(on_gpu: bool, tflops: float, peak, floor: float, loss: float):
    """(ok, why) of a timed step: on a GPU MFU at or above `floor` of the known dense bf16 peak
    (an unknown GPU fails: nothing to judge against); anywhere a finite loss and progress."""
    if not math.isfinite(loss) or not tflops > 0:
        return False, f"loss {loss}, {tflops} TFLOP/s"
    if not on_gpu:
        return True, "CPU: no MFU floor (it applies on GPUs)"
    if peak is None:
        return False, "no dense bf16 peak known for this GPU (add it to PEAK_BF16)"
    mfu = tflops / peak
    return mfu >= floor, f"MFU {100 * mfu:.1f}% of {peak:.0f} TFLOP/s (floor {100 * floor:.0f}%)"


def run_plain_checks(setup) -> None:
    """The checks with the plain optimizer, in this process (DP = 1)."""
    check_versions(setup)
    for fn in (check_natural_rounds, check_forced, check_freed, check_resume, check_obs_rounds, check_adaptive,
               check_greedy):
        fn(setup, False, suffix="plain")


def run_distopt_checks(setup) -> None:
    """The distributed-optimizer checks, on every rank of this process group."""
    check_init_from(setup)
    for fn in (check_natural_rounds, check_forced, check_freed, check_resume, check_obs_rounds, check_adaptive,
               check_greedy):
        fn(setup, True, suffix="distopt")


def launch_distopt_checks(args, workdir: Path, dp: int) -> None:
    """Run the distributed-optimizer checks at DP = `dp` in a `torchrun`, echoing its CHECK lines."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(dp), "--master-port",
               str(args.port), __file__, "--device", args.device, "--part", "distopt", "--workdir", str(workdir),
               "--mfu-floor", str(args.mfu_floor)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("CHECK ")]
    for line in lines:
        print(line, flush=True)
        RESULTS.append(line.split()[2] == "PASS")
    if result.returncode not in (0, 1) or not lines:
        sys.stderr.write(result.stderr[-5000:])
        report(f"distopt_dp{dp}", False, f"the DP={dp} run exited with {result.returncode}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto",
                        help="cpu: the same checks at toy scale without a GPU")
    parser.add_argument("--layers", type=int, default=4, help="layers of the SmolLM-1.7B-shaped step-time model")
    parser.add_argument("--iters", type=int, default=10, help="timed steps")
    parser.add_argument("--dp", type=int, default=None,
                        help="data-parallel ranks of the distributed-optimizer checks (default: 2 on CPU, "
                             "min(2, GPUs) on a GPU machine)")
    parser.add_argument("--mfu-floor", type=float, default=0.25, help="step_time fails below this MFU on a GPU")
    parser.add_argument("--port", type=int, default=29731, help="rendezvous port of the DP run")
    parser.add_argument("--part", choices=["all", "distopt"], default="all", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
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

    if args.part == "distopt":  # a rank of the DP run: its CHECK lines go to the launcher
        init_distributed(1, 1, seed=1)
        run_distopt_checks(Setup(args, Path(args.workdir), write=False))
        return 1 if RESULTS.count(False) else 0
    on_gpu = torch.cuda.is_available()
    dp = args.dp or (min(2, torch.cuda.device_count()) if on_gpu else 2)
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(args, Path(tmp))
        if dp > 1:
            # Before this process joins a process group of its own: the DP run is separate.
            launch_distopt_checks(args, Path(tmp), dp)
        init_distributed(1, 1, seed=1)
        run_plain_checks(setup)
        if dp == 1:
            print("gpu_check: one device, so the distributed-optimizer checks run at DP=1 "
                  "(one unsharded range)", flush=True)
            run_distopt_checks(setup)
        check_step_time(setup, args.layers if on_gpu else 1, 2048 if on_gpu else 128, args.iters if on_gpu else 2)
    failed = RESULTS.count(False)
    print(f"gpu_check: {len(RESULTS) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
