"""What one pruning round sends per rank at SmolLM-1.7B on 32 GPUs (TP=1, DP=32, the
distributed optimizer: `configs/recipes/pap_469m.yaml`), computed from the layout.

    python bench/round_at_scale.py [--dp 32] [--rounds 1]

No 32-GPU run is possible here, so this computes, for the recipe's shapes, what
`pap.sharding.local_round` moves: at TP=1 the weights stay on every rank, and the only
elements that change owner are fp32 masters and Adam moments whose distributed-optimizer
range moved. megatron lays each dtype's parameters out in one buffer in reverse
registration order, each start padded to 64 elements and the end to a multiple of
DP x 128, and gives DP rank d the d-th of DP equal pieces (one bucket: pap leaves
`bucket_size` unset). A round shifts every later parameter down by what it removes, so
rank d's piece moves by the difference between what was removed before its boundary and
its share of all that was removed. Each element that changes owner travels as three fp32
values (master, exp_avg, exp_avg_sq). Prints, per removal kind, the elements removed and
the worst rank's elements and bytes sent.

It also gives the memory and traffic of `prune.update: obs` at that layout, from
`pap.sharding.hessians`' own block list and ownership rule: the float64 Hessians each
rank owns, and the sampled rows each rank sends per step at `prune.hessian_tokens`.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Tuple

HIDDEN, FFN, HEADS, HEAD_DIM, LAYERS, VOCAB = 2048, 8192, 32, 64, 24, 49152
PAD, END_PAD = 64, 128


def parameters() -> List[Tuple[str, int, int]]:
    """(name, rows, columns) of SmolLM-1.7B's megatron parameters in registration order
    (tied embeddings; local spec: separate norm weights)."""
    params = [("embedding", VOCAB, HIDDEN)]
    for layer in range(LAYERS):
        params += [(f"{layer}.input_layernorm", HIDDEN, 1), (f"{layer}.linear_proj", HIDDEN, HEADS * HEAD_DIM),
                   (f"{layer}.linear_qkv", 3 * HEADS * HEAD_DIM, HIDDEN), (f"{layer}.pre_mlp_layernorm", HIDDEN, 1),
                   (f"{layer}.linear_fc1", 2 * FFN, HIDDEN), (f"{layer}.linear_fc2", HIDDEN, FFN)]
    return params + [("final_layernorm", HIDDEN, 1)]


def removed(name: str, kind: str, count: int) -> Tuple[List[int], List[int]]:
    """Rows and columns of `name` that `count` removals of `kind` take (from the middle)."""
    part = name.split(".")[-1]
    if kind == "ffn":
        channels = list(range(FFN // 2, FFN // 2 + count))
        return {"linear_fc1": (channels + [FFN + c for c in channels], []),
                "linear_fc2": ([], channels)}.get(part, ([], []))
    if kind == "attn":  # MHA: a head takes its q, k, v rows (one group of 3 x 64) and 64 proj columns
        heads = range(HEADS // 2, HEADS // 2 + count)
        rows = [h * 3 * HEAD_DIM + i for h in heads for i in range(3 * HEAD_DIM)]
        columns = [h * HEAD_DIM + i for h in heads for i in range(HEAD_DIM)]
        return {"linear_qkv": (rows, []), "linear_proj": ([], columns)}.get(part, ([], []))
    channels = list(range(HIDDEN // 2, HIDDEN // 2 + count))  # stem: a hidden channel of every tensor
    if part in ("embedding", "linear_qkv", "linear_fc1"):
        return [], channels
    return channels, []


def _padded(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def layout(shapes: List[Tuple[str, int, int]], dp: int) -> Tuple[List[int], int]:
    """Start of each parameter in the buffer (reverse registration order) and its padded size."""
    starts, position = [0] * len(shapes), 0
    for index in reversed(range(len(shapes))):
        _, rows, columns = shapes[index]
        position = _padded(position, PAD)
        starts[index] = position
        position += rows * columns
    return starts, _padded(position, dp * END_PAD)


def survivors_before(offset: int, rows: int, columns: int, gone_rows: List[int], gone_columns: List[int]) -> int:
    """Surviving elements at flat positions < `offset` of a (rows, columns) tensor."""
    row, column = divmod(offset, columns)
    kept_columns = columns - len(gone_columns)
    full_rows = row - sum(1 for r in gone_rows if r < row)
    partial = 0 if row in gone_rows else column - sum(1 for c in gone_columns if c < column)
    return full_rows * kept_columns + partial


def sent_per_rank(kind: str, count: int, dp: int) -> Tuple[int, List[int]]:
    """Elements removed, and for each DP rank the elements whose owner changes."""
    old = parameters()
    cuts = [removed(name, kind, count) for name, _, _ in old]
    new = [(name, rows - len(r), columns - len(c)) for (name, rows, columns), (r, c) in zip(old, cuts)]
    old_starts, old_size = layout(old, dp)
    new_starts, new_size = layout(new, dp)

    def rank_of_survivor(position: int) -> int:
        """Survivor order (0, 1, ...) of the first surviving element at or after old buffer `position`."""
        total = 0
        for (name, rows, columns), (r, c), start in zip(old, cuts, old_starts):
            size = rows * columns
            if position >= start + size:
                total += size - len(r) * columns - len(c) * rows + len(r) * len(c)
            elif position > start:
                total += survivors_before(position - start, rows, columns, r, c)
        return total

    removed_total = sum(len(r) * columns + len(c) * rows - len(r) * len(c)
                        for (_, rows, columns), (r, c) in zip(old, cuts))
    old_piece, new_piece = old_size // dp, new_size // dp
    moved = []
    for d in range(dp):
        first, last = rank_of_survivor(d * old_piece), rank_of_survivor((d + 1) * old_piece)
        # survivors [first, last) leave rank d unless their new position is in d's new piece
        low, high = d * new_piece, (d + 1) * new_piece
        stay = 0
        if last > first:
            lo, hi = _survivor_at(low, new, new_starts), _survivor_at(high, new, new_starts)
            stay = max(0, min(last, hi) - max(first, lo))
        moved.append((last - first) - stay)
    return removed_total, moved


def _survivor_at(position: int, new, new_starts) -> int:
    """Number of (new) elements at buffer positions < `position`."""
    total = 0
    for (_, rows, columns), start in zip(new, new_starts):
        total += max(0, min(rows * columns, position - start))
    return total


def obs_figures(dp: int, tokens: int, global_batch: int = 512) -> list:
    """Markdown lines: per-rank Hessian memory and per-step sample traffic of the OBS update."""
    import math

    from pap.sharding.hessians import block_keys, deal_owners

    blocks = block_keys(list(range(LAYERS)), last_stage=True, tied=True)
    owners = deal_owners(blocks, dp)
    width = {"fc2": FFN, "proj": HEADS * HEAD_DIM, "qkv": HIDDEN, "fc1": HIDDEN}
    held = [0] * dp
    for key, owner in owners.items():
        held[owner] += 8 * width[key[0]] ** 2
    rows = math.ceil(tokens / global_batch) * global_batch // dp  # sampled rows per rank per block per step
    sent = 4 * rows * sum(width[key[0]] for key in blocks)  # fp32 rows, every block (TP=1: all columns)
    everything = sum(8 * width[key[0]] ** 2 for key in blocks)
    return [f"prune.update=obs at DP={dp}, hessian_tokens={tokens}: {len(blocks)} Hessians, "
            f"{everything / 2**30:.2f} GiB in float64 in all; per rank at most {max(held) / 2**20:.0f} MiB "
            f"(mean {sum(held) / dp / 2**20:.0f} MiB); each rank sends {rows} sampled rows per layer input "
            f"per step, {sent / 2**20:.1f} MiB per step."]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dp", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="removals of one kind in one round")
    parser.add_argument("--hessian-tokens", type=int, default=1024, help="prune.hessian_tokens (the OBS line)")
    args = parser.parse_args()
    total = sum(rows * columns for _, rows, columns in parameters())
    print(f"SmolLM-1.7B: {total:,} parameters; TP=1, DP={args.dp}, distributed optimizer; "
          f"{args.rounds} removal(s) per round; fp32 transport, 3 values (master, 2 moments) per element")
    print("| removal | elements removed | worst rank: elements sent | worst rank: bytes sent | mean rank: bytes sent |")
    print("|---|---|---|---|---|")
    for kind in ("ffn", "attn", "stem"):
        gone, moved = sent_per_rank(kind, args.rounds, args.dp)
        print(f"| {kind} | {gone:,} | {max(moved):,} | {12 * max(moved):,} | {12 * sum(moved) // len(moved):,} |")
    for line in obs_figures(args.dp, args.hessian_tokens):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
