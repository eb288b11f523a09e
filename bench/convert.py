"""Seconds and peak memory of HF -> pap -> HF conversion for a SmolLM-1.7B-shaped model.

    python bench/convert.py [--workdir /tmp/pap-bench-convert] [--layers 24]

Writes a random bf16 Llama with SmolLM-1.7B's shape (hidden 2048, FFN 8192, 24 layers,
32 heads, vocab 49152, tied embeddings) as sharded safetensors, converts it with
`python -m pap.convert hf-to-mcore` and back with `mcore-to-hf`, sampling the memory
(PSS) of each converter's whole process tree, and checks the round trip is exact.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
             num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5, tie_word_embeddings=True,
             rope_theta=10000.0, max_position_embeddings=2048)


def write_random_model(out: Path, shape: dict) -> int:
    """A random bf16 Llama in 2 GB safetensors shards; returns the weight bytes."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    h, f, v, layers = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"], shape["num_hidden_layers"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    for l in range(layers):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (h, h),
                       p + "self_attn.v_proj.weight": (h, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f)})
    generator = torch.Generator().manual_seed(0)
    shard, shard_bytes, weight_map, files, total = {}, 0, {}, [], 0

    def flush():
        nonlocal shard, shard_bytes
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in shard})
        shard, shard_bytes = {}, 0

    for name, dims in shapes.items():
        tensor = (torch.randn(*dims, generator=generator) * 0.02).to(torch.bfloat16)
        shard[name] = tensor
        shard_bytes += tensor.numel() * 2
        total += tensor.numel() * 2
        if shard_bytes > 2 << 30:
            flush()
    if shard:
        flush()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
              "hidden_act": "silu", **shape}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return total


def timed(cmd) -> tuple:
    """(seconds, peak memory in bytes of the process tree) of running `cmd`.

    Memory is the sum of each process's PSS (proportional set size): the checkpoint
    writer forks worker processes that share the parent's pages copy-on-write, and
    summing plain RSS would count those shared pages once per process.
    """
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    root, peak_pss, peak_rss = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            tree = [p for p in [root] + root.children(recursive=True) if p.is_running()]
            infos = [p.memory_full_info() for p in tree]
            peak_pss = max(peak_pss, sum(i.pss for i in infos))
            peak_rss = max(peak_rss, sum(i.rss for i in infos))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed with {proc.returncode}")
    return time.time() - start, peak_pss, peak_rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/pap-bench-convert")
    parser.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"])
    parser.add_argument("--keep", action="store_true", help="keep the converted files")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    shape = {**SHAPE, "num_hidden_layers": args.layers}
    weight_bytes = write_random_model(work / "hf", shape)
    gb = weight_bytes / 1e9
    convert = [sys.executable, "-m", "pap.convert"]
    to_mcore = timed(convert + ["hf-to-mcore", "--hf", str(work / "hf"), "--out", str(work / "mcore")])
    to_hf = timed(convert + ["mcore-to-hf", "--ckpt", str(work / "mcore"), "--out", str(work / "back")])

    from pap.hf.weights import SafetensorsReader

    original, back = SafetensorsReader(str(work / "hf")), SafetensorsReader(str(work / "back"))
    assert set(original.names()) == set(back.names()), "tensor names differ after the round trip"
    for name in original.names():
        assert torch.equal(original.get(name), back.get(name)), name
    print(f"# {platform.node()}: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
          f"Python {platform.python_version()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print(f"# model: SmolLM-1.7B shape, {args.layers} layers, bf16, {gb:.2f} GB of weights; round trip exact")
    print("| direction | seconds | peak PSS (GB) | peak PSS / weights | peak RSS sum (GB), counts shared pages per process |")
    print("|---|---|---|---|---|")
    for label, (seconds, pss, rss) in (("hf-to-mcore", to_mcore), ("mcore-to-hf", to_hf)):
        print(f"| {label} | {seconds:.1f} | {pss / 1e9:.2f} | {pss / weight_bytes:.2f}x | {rss / 1e9:.2f} |")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
