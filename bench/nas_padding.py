"""What the Nemotron-NAS export's padding costs (`pap.hf.nas_padding`): zero query heads and
KV copies, in parameters and FLOPs per token, for shapes pruning leaves.

    python bench/nas_padding.py

Computed from the shapes alone (no model is built):
* the adaptive model of `tests/hf/test_serving.py` (uneven groups, per-layer heads);
* the `adapt_469m` recipe's expected shape: SmolLM-1.7B (24 layers, 32 heads of 64, MHA,
  FFN 8,192) after the published Adapt-Pruner rule's 39 increments (delta = A = 0.02).
  Each layer's sparsity is s_l = clip(39 x (delta - A z_l), 0, 0.99); the layers' normalised
  importances z_l are not known before the run, so three assumed profiles are shown: all
  equal (z = 0), linear from +1 (layer 0 kept widest) to -1, and Adapt-Pruner's typical
  first-layer outlier (z = +1 at layer 0, -1/23 elsewhere). Heads and FFN keep
  int(width x (1 - s_l)), as the authors count.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pap.arch import Arch  # noqa: E402
from pap.hf import nas_padding  # noqa: E402

SEQ = 2048


def smollm_after(profile):
    heads, ffn = [], []
    for z in profile:
        s = min(max(39 * (0.02 - 0.02 * z), 0.0), 0.99)
        heads.append(max(int(32 * (1 - s)), 1))
        ffn.append(max(int(8192 * (1 - s)), 1))
    return Arch(vocab_size=49152, padded_vocab_size=49152, hidden_size=2048, head_dim=64,
                heads_per_group=[[1] * h for h in heads], ffn=ffn, tie_embeddings=True)


def row(label, arch, seq):
    attention = nas_padding.plan(arch)
    padded = attention.padded_arch(arch)
    heads = [arch.num_heads(l) for l in range(arch.num_layers)]
    extra_params = padded.num_params() - arch.num_params()
    extra_flops = padded.flops_per_token(seq) / arch.flops_per_token(seq) - 1
    return (f"| {label} | {arch.num_params():,} | {min(heads)}-{max(heads)} | {attention.query_heads} | "
            f"{sum(attention.query_heads - h for h in heads)} | "
            f"{sum(a.kv_heads - arch.num_kv_heads(l) for l, a in enumerate(attention.layers))} | "
            f"+{extra_params:,} ({extra_params / arch.num_params():.2%}) | +{extra_flops:.2%} at {seq} |")


def main() -> int:
    from tests.hf.test_serving import MODELS

    print("| model | parameters | query heads per layer | Q | zero query heads | extra KV heads | "
          "added parameters | added FLOPs per token |")
    print("|---|---|---|---|---|---|---|---|")
    print(row("test: adaptive (uneven groups)", MODELS["adaptive"], 128))
    print(row("test: pruned hidden", MODELS["hidden"], 128))
    layers = 24
    profiles = {"equal importances": [0.0] * layers,
                "linear, layer 0 widest": [1 - 2 * l / (layers - 1) for l in range(layers)],
                "first-layer outlier": [1.0] + [-1 / (layers - 1)] * (layers - 1)}
    for name, profile in profiles.items():
        print(row(f"adapt_469m expected, {name}", smollm_after(profile), SEQ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
