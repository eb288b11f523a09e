"""EfficientLLM-B's update against the number of sampled tokens per Hessian width, out of sample;
and what a hidden-channel removal's RMSNorm rescaling does to the updated layers.

    python bench/obs_samples.py [--sizes tiny 30M] [--ratios 0.5 1 2 4 8 16 32] [--train-steps 40]

For each model size: pap's trainer (TP=1, fp32, pruning off) trains `--train-steps` steps on
a synthetic dataset (arithmetic token sequences, `data_prep.synthetic`), then the inputs of
one layer's `linear_fc2` (the SwiGLU activation, width = FFN) are captured over plain
forwards. For r in `--ratios`, H is built from r x width tokens and the update removes the
`--removed` fraction of least salient input columns (|W| column norm x input RMS, the
first-order score; the same fraction at every size); the error ‖ΔW X_h‖/‖W X_h‖ is then
measured on `--held` tokens that are in no H, against the error of just dropping the columns. Median over `--draws` disjoint token draws.

The RMSNorm part: for a hidden channel c removed from the residual stream, `linear_qkv`'s
input is RMSNorm(x) over the remaining channels, whose per-token scale changes (channel c's
x_c² leaves the mean). The update is fitted to the inputs before the removal; the bench
measures, on held-out tokens, the update's error with the inputs the update assumes (the old
normalised values without channel c) and with the inputs the layer really gets after the
removal (renormalised over h - 1 channels), for the least salient channels.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {
    "tiny": {"hidden_size": 256, "num_layers": 4, "num_attention_heads": 8, "num_query_groups": 4,
             "ffn_hidden_size": 704},
    "30M": {"hidden_size": 512, "num_layers": 8, "num_attention_heads": 8, "num_query_groups": 4,
            "ffn_hidden_size": 2048},
}


def trained_model(size: str, steps: int, workdir: Path):
    """A pap trainer of `size` after `steps` training steps on synthetic data; and the data."""
    from data_prep.synthetic import write_arithmetic_dataset
    from pap.config import config_from_dict
    from pap.trainer import Trainer

    data = write_arithmetic_dataset(str(workdir / f"{size}_text_document"), 3000, 4096, lengths=(50, 600))
    cfg = config_from_dict({
        "model": {**SIZES[size], "vocab_size": 4096, "tie_embeddings": False},
        "parallel": {"tp": 1, "pp": 1},
        "train": {"iters": max(steps, 10), "micro_batch_size": 8, "global_batch_size": 16, "lr": 3e-3, "min_lr": 3e-4,
                  "warmup_iters": min(5, max(steps, 10) - 1), "eval_iters": 0},
        "data": {"blend": [data], "seq_length": 128, "split": "100,0,0"},
        "log": {"interval": 1000}, "checkpoint": {"dir": None}})
    trainer = Trainer(cfg)
    for _ in range(steps):
        trainer.train_step()
    return trainer, data


def capture(trainer, data: str, tokens_wanted: int, layer: int):
    """(fc2 inputs [tokens, ffn], input-norm inputs [tokens, hidden]) of `layer` over plain forwards."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    model = trainer.model.module
    block = model.decoder.layers[layer]
    found = {"fc2": [], "residual": []}
    hooks = [block.mlp.linear_fc2.register_forward_hook(lambda m, a, o: found["fc2"].append(a[0].detach())),
             block.input_layernorm.register_forward_hook(lambda m, a, o: found["residual"].append(a[0].detach()))]
    dataset = IndexedDataset(data)
    stream = np.concatenate([dataset[i] for i in range(len(dataset))]).astype(np.int64)
    seq, batch = 128, 16
    model.eval()
    with torch.no_grad():
        start = 0
        while sum(x.shape[0] * x.shape[1] for x in found["fc2"]) < tokens_wanted:
            ids = torch.from_numpy(stream[start:start + seq * batch].reshape(batch, seq))
            start += seq * batch
            positions = torch.arange(seq).expand(batch, seq)
            model(ids, positions, None)
    model.train()
    for hook in hooks:
        hook.remove()
    return tuple(torch.cat([x.reshape(-1, x.shape[-1]) for x in found[k]]).double()[:tokens_wanted]
                 for k in ("fc2", "residual"))


def least_salient(weight: torch.Tensor, inputs: torch.Tensor, count: int) -> list:
    """The `count` input columns with the smallest |W[:, j]| x RMS(x_j)."""
    score = weight.norm(dim=0) * inputs.square().mean(0).sqrt()
    return score.argsort()[:count].tolist()


def errors(weight, fit, held, removed, damp):
    """(‖ΔW X_h‖/‖W X_h‖ with the update fitted on `fit`, the same just dropping the columns)."""
    from pap.pruning.obs import obs_update

    updated = obs_update(weight, fit.T @ fit, removed, damp)
    reference = held @ weight.T
    dropped = weight.clone()
    dropped[:, removed] = 0
    return (((held @ updated.T) - reference).norm() / reference.norm()).item(), \
        (((held @ dropped.T) - reference).norm() / reference.norm()).item()


def samples_curve(weight, inputs, ratios, held_count, removed_count, draws, damp):
    """Rows (r, tokens, median held-out error, median in-sample error, median plain error)."""
    width = weight.shape[1]
    held = inputs[:held_count]
    pool = inputs[held_count:]
    removed = least_salient(weight, inputs, removed_count)
    rows = []
    for ratio in ratios:
        count = int(ratio * width)
        outs, ins, plains = [], [], []
        for draw in range(draws):
            fit = pool[draw * count:(draw + 1) * count]
            if fit.shape[0] < count:
                break
            out, plain = errors(weight, fit, held, removed, damp)
            outs.append(out)
            plains.append(plain)
            ins.append(errors(weight, fit, fit, removed, damp)[0])
        if outs:
            rows.append((ratio, count, statistics.median(outs), statistics.median(ins), statistics.median(plains),
                         len(outs)))
    return rows


def rms_norm(x: torch.Tensor, gamma: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * gamma


def rmsnorm_effect(trainer, residual, layer, channels, fit_count, damp):
    """Per removed hidden channel: (channel, update error on held-out tokens with the inputs it
    assumes, with the renormalised inputs the layer gets, plain-removal error with those)."""
    from pap.pruning.obs import obs_update

    block = trainer.model.module.decoder.layers[layer]
    norm = block.input_layernorm
    gamma, eps = norm.weight.detach().double(), getattr(norm, "eps", 1e-5)
    weight = block.self_attention.linear_qkv.weight.detach().double()
    fit_x, held_x = residual[:fit_count], residual[fit_count:]
    fit_in, held_in = rms_norm(fit_x, gamma, eps), rms_norm(held_x, gamma, eps)
    reference = held_in @ weight.T
    out = []
    for c in least_salient(weight, fit_in, channels):
        kept = [j for j in range(residual.shape[1]) if j != c]
        updated = obs_update(weight, fit_in.T @ fit_in, [c], damp)[:, kept]
        assumed = held_in[:, kept]
        actual = rms_norm(held_x[:, kept], gamma[kept], eps)  # what the layer sees after the cut
        plain = weight[:, kept]
        scale = (actual[:, 0] / assumed[:, 0]).abs()
        out.append((c, ((assumed @ updated.T - reference).norm() / reference.norm()).item(),
                    ((actual @ updated.T - reference).norm() / reference.norm()).item(),
                    ((actual @ plain.T - reference).norm() / reference.norm()).item(),
                    (scale - 1).abs().median().item()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "30M"], choices=list(SIZES))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 1, 2, 4, 8, 16])
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--removed", type=float, default=0.02,
                        help="fraction of linear_fc2's input columns removed at once")
    parser.add_argument("--held", type=int, default=4096, help="held-out tokens")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--damp", type=float, default=0.01)
    parser.add_argument("--hidden-channels", type=int, default=4)
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    from pap.distributed import init_distributed

    init_distributed(1, 1, seed=1)
    torch.manual_seed(0)
    print(f"# {platform.node()} CPU, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
          f"{args.train_steps} training steps, layer {args.layer}, {args.removed:.0%} of fc2 columns removed, "
          f"damp {args.damp}, {args.held} held-out tokens, median of up to {args.draws} draws")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            trainer, data = trained_model(size, args.train_steps, Path(tmp))
            width = SIZES[size]["ffn_hidden_size"]
            hidden = SIZES[size]["hidden_size"]
            total = args.held + max(int(max(args.ratios) * width) * args.draws, 16 * hidden)
            fc2_in, residual = capture(trainer, data, total, args.layer)
            weight = trainer.model.module.decoder.layers[args.layer].mlp.linear_fc2.weight.detach().double()
            removed = max(1, round(args.removed * width))
            print(f"\n## {size}: linear_fc2, width {width}, {removed} columns removed, "
                  f"{fc2_in.shape[0]:,} tokens captured\n")
            print("| tokens / width | tokens | error, held-out | error, in-sample | plain removal "
                  "| held-out / plain | draws |")
            print("|---|---|---|---|---|---|---|")
            for ratio, count, out, ins, plain, n in samples_curve(weight, fc2_in, args.ratios, args.held,
                                                                  removed, args.draws, args.damp):
                print(f"| {ratio:g} | {count:,} | {out:.2e} | {ins:.2e} | {plain:.2e} | {out / plain:.2f} | {n} |",
                      flush=True)
            fit = 16 * hidden
            print(f"\n## {size}: linear_qkv after a hidden-channel removal, H from {fit:,} tokens\n")
            print("| channel | update error, inputs it assumes | update error, renormalised inputs "
                  "| plain removal, renormalised | median per-token |scale - 1| |")
            print("|---|---|---|---|---|")
            for c, assumed, actual, plain, scale in rmsnorm_effect(trainer, residual[:fit + args.held], args.layer,
                                                                   args.hidden_channels, fit, args.damp):
                print(f"| {c} | {assumed:.2e} | {actual:.2e} | {plain:.2e} | {scale:.2e} |", flush=True)
            trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
