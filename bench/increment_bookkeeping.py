"""Bookkeeping of one adaptive increment at SmolLM-1.7B's shape (`prune.layers: adaptive`).

    python bench/increment_bookkeeping.py [--increment 0.05]

An Adapt-Pruner increment removes `--increment` of the parameters as one-layer removals in
one round: at SmolLM-1.7B, 5% is about 14,000 FFN channels. The round's Python-side work
grows with that count: chaining the `Arch` through every removal, and for every tensor the
surviving indices (`pap.pruning.remove.kept_indices`, which the local round and the
checkpoint boxes use). This times both on the CPU for the recipe's shapes (random layers
and channels; no model is built) and prints the total per increment.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from pap.arch import Arch
from pap.pruning.remove import arch_chain, kept_indices
from pap.pruning.select import UNTOUCHED, Removal, remove_from_arch

HIDDEN, FFN, HEADS, HEAD_DIM, LAYERS, VOCAB = 2048, 8192, 32, 64, 24, 49152


def tensors():
    """(global name, full shape) of SmolLM-1.7B's megatron parameters (tied embeddings)."""
    out = [("embedding.word_embeddings.weight", (VOCAB, HIDDEN)), ("decoder.final_layernorm.weight", (HIDDEN,))]
    for layer in range(LAYERS):
        prefix = f"decoder.layers.{layer}."
        out += [(prefix + "input_layernorm.weight", (HIDDEN,)), (prefix + "pre_mlp_layernorm.weight", (HIDDEN,)),
                (prefix + "self_attention.linear_qkv.weight", (3 * HEADS * HEAD_DIM, HIDDEN)),
                (prefix + "self_attention.linear_proj.weight", (HIDDEN, HEADS * HEAD_DIM)),
                (prefix + "mlp.linear_fc1.weight", (2 * FFN, HIDDEN)), (prefix + "mlp.linear_fc2.weight", (HIDDEN, FFN))]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--increment", type=float, default=0.05)
    args = parser.parse_args()
    arch = Arch(vocab_size=VOCAB, padded_vocab_size=VOCAB, hidden_size=HIDDEN, head_dim=HEAD_DIM,
                heads_per_group=[[1] * HEADS for _ in range(LAYERS)], ffn=[FFN] * LAYERS, tie_embeddings=True)
    count = int(args.increment * arch.num_params() / (3 * HIDDEN))
    rng, removals, after = random.Random(0), [], arch
    start = time.time()
    for _ in range(count):
        layer = rng.randrange(LAYERS)
        indices = [UNTOUCHED] * LAYERS
        indices[layer] = rng.randrange(after.ffn[layer])
        removal = Removal("ffn", tuple(indices), 0.0, ())
        removals.append(removal)
        after = remove_from_arch(after, removal)
    chain = time.time() - start
    start = time.time()
    before = arch_chain(arch, removals)  # a round's plan holds this chain
    for name, shape in tensors():
        kept_indices(name, shape, arch, removals, before)
    kept = time.time() - start
    print(f"SmolLM-1.7B ({arch.num_params():,} parameters), one increment of {args.increment:.0%}: "
          f"{count:,} one-layer FFN removals")
    print(f"| chain the Arch | {chain:.2f} s |\n| kept_indices, all {len(tensors())} tensors | {kept:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
