"""Training throughput: pap (pruning off) against a plain megatron-core loop, and pap at an
aligned against an unaligned pruned shape.

    python bench/throughput.py [--shape cpu|smollm] [--nproc 2] [--steps 8] [--dtype bf16]
                               [--pairs 5] [--compare megatron,pap aligned,unaligned]

Each run is a fresh `torchrun` (`--nproc` processes, DP only, the distributed optimizer),
bf16 with fp32 masters by default, on the same shape, micro batch and sequence length:

* `megatron`: megatron-core's own `GPTModel` (its local or Transformer Engine layer spec),
  `DistributedDataParallel`, `get_megatron_optimizer` and `get_forward_backward_func` over
  random tokens: no pap code (on CPU, megatron_patches, which are inert on GPUs, make
  megatron-core run at all);
* `pap`: `pap.trainer.Trainer` with pruning off, same shape and settings;
* `pap-unaligned` / `pap-aligned`: pap at an FFN and hidden width that a pruning stage
  would leave without and with `prune.final_multiple_of: 64` (the `pap` shape minus 1,
  and minus 64).

Each comparison (`megatron` against `pap`, `pap-aligned` against `pap-unaligned`; for the
latter, which do different work per token, FLOP/s is the ratio that matters) runs as
`--pairs` interleaved pairs, the order alternating from pair to pair (A B, B A, A B, ...), so
that a slow phase of a shared machine falls on both sides. A run's figure is the median of
its steps after the first two. Prints one Markdown row per run kind: the median over its
runs of the step time with the spread (min-max over the runs), tokens/s, TFLOP/s per device
(`pap.arch.Arch.flops_per_token`, Megatron's count), MFU against the device's dense bf16
peak where known; then per comparison the median of the per-pair ratios of tokens/s with
their min-max. A ratio is stated only when every pair's ratio lies on the same side of 1;
otherwise the line says the runs do not resolve a difference. Shapes:
`cpu` is hidden 512, FFN 2048, 8 heads, 4 layers, seq 256, micro batch 2; `smollm` is
SmolLM-1.7B (hidden 2048, FFN 8192, 32 heads, 24 layers, vocab 49152), seq 2048, micro
batch 4.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16 = {"H200": 989.0, "H100": 989.0, "A800": 312.0, "A100": 312.0}
SHAPES = {
    "cpu": {"hidden": 512, "ffn": 2048, "heads": 8, "layers": 4, "vocab": 4096, "seq": 256, "micro": 2},
    "smollm": {"hidden": 2048, "ffn": 8192, "heads": 32, "layers": 24, "vocab": 49152, "seq": 2048, "micro": 4},
}


def flops_per_token(shape: dict) -> float:
    """Megatron's training FLOPs per token at `shape`, from `pap.arch.Arch.flops_per_token`:
    attention widths are heads x head_dim, which differs from hidden once a hidden channel is
    pruned (head_dim stays)."""
    from pap.arch import Arch

    heads, layers = shape["heads"], shape["layers"]
    head_dim = shape.get("head_dim") or shape["hidden"] // heads
    arch = Arch(vocab_size=shape["vocab"], padded_vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                head_dim=head_dim, heads_per_group=[[1] * heads for _ in range(layers)],
                ffn=[shape["ffn"]] * layers, tie_embeddings=False)
    return arch.flops_per_token(shape["seq"])


def _megatron_steps(shape: dict, dtype: str, steps: int) -> list:
    """Step times of a plain megatron-core loop (no pap code)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.models.gpt import GPTModel, gpt_layer_specs
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.transformer_config import TransformerConfig

    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        import megatron_patches  # CPU only: megatron-core needs them to run at all

        megatron_patches.apply()
    dist.init_process_group("nccl" if on_gpu else "gloo")
    ps.initialize_model_parallel()
    model_parallel_cuda_manual_seed(1234)
    bf16 = dtype == "bf16"
    config = TransformerConfig(
        num_layers=shape["layers"], hidden_size=shape["hidden"], num_attention_heads=shape["heads"],
        ffn_hidden_size=shape["ffn"], gated_linear_unit=True, activation_func=F.silu, normalization="RMSNorm",
        add_bias_linear=False, attention_dropout=0.0, hidden_dropout=0.0, bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32, use_cpu_initialization=not on_gpu,
        bias_activation_fusion=on_gpu, masked_softmax_fusion=on_gpu, bias_dropout_fusion=on_gpu,
        apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False)
    spec = (gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec() if on_gpu and _te()
            else gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm"))
    model = GPTModel(config=config, transformer_layer_spec=spec, vocab_size=shape["vocab"],
                     max_sequence_length=shape["seq"], position_embedding_type="rope",
                     share_embeddings_and_output_weights=False)
    if on_gpu:
        model.cuda()
    model = DistributedDataParallel(config=config, module=model, ddp_config=DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=True))
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-4, bf16=bf16,
                                                       use_distributed_optimizer=True), [model])
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = model.no_sync
    device = "cuda" if on_gpu else "cpu"
    generator = torch.Generator().manual_seed(dist.get_rank())

    def forward_step(data_iterator, module):
        tokens = next(data_iterator)
        positions = torch.arange(shape["seq"], device=device).expand_as(tokens)
        output = module(tokens, positions, None, labels=tokens)
        return output, lambda out: (out.float().mean(), {"lm loss": out.float().mean().detach()})

    times = []
    for _ in range(steps):
        batches = [torch.randint(0, shape["vocab"], (shape["micro"], shape["seq"]), generator=generator).to(device)
                   for _ in range(shape["microbatches"])]
        _sync(on_gpu)
        start = time.time()
        model.zero_grad_buffer()
        optimizer.zero_grad()
        get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter(batches), model=[model],
                                    num_microbatches=len(batches), seq_length=shape["seq"],
                                    micro_batch_size=shape["micro"])
        optimizer.step()
        _sync(on_gpu)
        times.append(time.time() - start)
    return times


def _pap_steps(shape: dict, dtype: str, steps: int, data: str) -> list:
    """Step times of pap's trainer at `shape`, pruning off."""
    import torch

    from pap.config import config_from_dict
    from pap.trainer import Trainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = config_from_dict({
        "model": {"vocab_size": shape["vocab"], "hidden_size": shape["hidden"], "num_layers": shape["layers"],
                  "num_attention_heads": shape["heads"], "num_query_groups": shape["heads"],
                  "head_dim": shape.get("head_dim"), "ffn_hidden_size": shape["ffn"], "params_dtype": dtype},
        "parallel": {"distributed_optimizer": True},
        "train": {"iters": steps, "micro_batch_size": shape["micro"], "warmup_iters": 1, "eval_iters": 0,
                  "global_batch_size": shape["micro"] * shape["microbatches"] * world},
        "data": {"blend": [data], "seq_length": shape["seq"], "split": "100,0,0"},
        "checkpoint": {"dir": None}})
    trainer = Trainer(cfg)
    times = []
    for _ in range(steps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(trainer.train_step().seconds)
    trainer.close()
    return times


def _te() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def _sync(on_gpu: bool) -> None:
    if on_gpu:
        import torch

        torch.cuda.synchronize()


def measure(kind: str, shape: dict, dtype: str, steps: int, out: str) -> None:
    """One run on every rank of its torchrun; rank 0 writes its step times to `out`."""
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(REPO))
    rank = int(os.environ.get("RANK", "0"))
    if kind == "megatron":
        times = _megatron_steps(shape, dtype, steps)
    else:
        data = f"{out}/data_text_document"
        if rank == 0:
            from data_prep.synthetic import write_arithmetic_dataset

            write_arithmetic_dataset(data, 400, shape["vocab"], lengths=(shape["seq"], 2 * shape["seq"]))
        while not Path(f"{data}.idx").is_file():
            time.sleep(0.2)
        time.sleep(0.5)
        times = _pap_steps(shape, dtype, steps, data)
    if rank == 0:
        Path(out, "times.json").write_text(json.dumps(times))


def run(kind: str, shape: dict, dtype: str, steps: int, nproc: int) -> float:
    """Median step time (after two warm-up steps) of one kind in a fresh torchrun."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONWARNINGS": "ignore",
               "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc))}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                        "--master-port", str(29900 + hash(kind) % 90), __file__, "--one", kind,
                        "--shape-json", json.dumps(shape), "--dtype", dtype, "--steps", str(steps), "--out", out],
                       cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times = json.loads(Path(out, "times.json").read_text())
    return statistics.median(times[2:])


def pair_order(pair: int, first: str, second: str) -> tuple:
    """The two kinds of a comparison in the order of pair `pair`: alternating, so that neither
    side always runs first (after the other's warm caches, or into a slower phase)."""
    return (first, second) if pair % 2 == 0 else (second, first)


def spread(values: list) -> str:
    """`median (min-max)` of `values`."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def ratio_line(name: str, ratios: list, what: str = "tokens/s") -> str:
    """The per-pair ratios, stated as a ratio only when every pair falls on the same side of 1."""
    text = f"{name}: per-pair {what} ratios {', '.join(f'{r:.3f}' for r in ratios)}; median {spread(ratios)}"
    if min(ratios) > 1 or max(ratios) < 1:
        return text + ": every pair on the same side of 1."
    return text + ": the pairs straddle 1, so these runs do not resolve a difference."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="cpu", choices=list(SHAPES))
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=5, help="interleaved repetitions of each comparison")
    parser.add_argument("--compare", nargs="+", default=["megatron,pap", "aligned,unaligned"],
                        choices=["megatron,pap", "aligned,unaligned"])
    parser.add_argument("--microbatches", type=int, default=2, help="micro batches per step per rank")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--shape-json", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure(args.one, json.loads(args.shape_json), args.dtype, args.steps, args.out)
        return 0
    import torch

    shape = {**SHAPES[args.shape], "microbatches": args.microbatches}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{platform.node()} CPU"
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
    print(f"# {device}, {args.nproc} processes (DP, distributed optimizer), {args.dtype}, shape {args.shape}, "
          f"micro batch {shape['micro']} x {args.microbatches}, seq {shape['seq']}, {args.pairs} interleaved "
          f"pairs of {args.steps} steps, {time.strftime('%Y-%m-%d')}")
    head_dim = shape["hidden"] // shape["heads"]
    shapes = {"megatron": shape, "pap": shape,
              "unaligned": {**shape, "ffn": shape["ffn"] - 1, "hidden": shape["hidden"] - 1, "head_dim": head_dim},
              "aligned": {**shape, "ffn": shape["ffn"] - 64, "hidden": shape["hidden"] - 64, "head_dim": head_dim}}
    steps = {kind: [] for kind in shapes}
    for comparison in args.compare:
        first, second = comparison.split(",")
        for pair in range(args.pairs):
            for kind in pair_order(pair, first, second):
                steps[kind].append(run("megatron" if kind == "megatron" else "pap", shapes[kind], args.dtype,
                                       args.steps, args.nproc))
                print(f"# pair {pair + 1}, {kind}: {steps[kind][-1]:.3f} s/step", flush=True)
    print("| run | FFN | hidden | runs | step (s), median (min-max) | tokens/s | TFLOP/s per device | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    tokens_per_s = {}
    for kind, times in steps.items():
        if not times:
            continue
        run_shape = shapes[kind]
        batch_tokens = run_shape["micro"] * run_shape["microbatches"] * run_shape["seq"] * args.nproc
        tokens_per_s[kind] = [batch_tokens / t for t in times]
        tokens = statistics.median(tokens_per_s[kind])
        tflops = flops_per_token(run_shape) * tokens / args.nproc / 1e12
        mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a"
        print(f"| {kind} | {run_shape['ffn']} | {run_shape['hidden']} | {len(times)} | {spread(times)} | "
              f"{tokens:,.0f} | {tflops:.4f} | {mfu} |", flush=True)
    for comparison in args.compare:
        first, second = comparison.split(",")
        ratios = [b / a for a, b in zip(tokens_per_s[first], tokens_per_s[second])]
        print(ratio_line(f"{second} / {first}", ratios))
        work = flops_per_token(shapes[second]) / flops_per_token(shapes[first])
        if work != 1:
            # Different shapes do different work per token: how fast the device runs each
            # shape is the FLOP/s ratio, which alignment is meant to raise.
            print(ratio_line(f"{second} / {first}", [r * work for r in ratios], "FLOP/s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
