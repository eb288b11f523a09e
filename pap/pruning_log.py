"""What a pruning run reports: the event log's lines, the progress line's shape, printed lines.

Every removal is one line of `<checkpoint.dir>/pruning_events.jsonl` (`removal_event`),
which `pap.plot` draws and a resumed run truncates to its checkpoint.
"""

from __future__ import annotations

import json
from typing import Iterable, Optional

from pap import fault_injection
from pap.arch import Arch
from pap.progress import truncate_jsonl
from pap.pruning.select import Removal

LINES_PER_ROUND = 32
"""Rounds with more removals than this print one summary line instead of a line each."""


def layer_mean(values):
    """The per-layer mean of a width: an int when every layer has it (uniform pruning)."""
    values = list(values)
    return values[0] if len(set(values)) == 1 else sum(values) / len(values)


def removal_event(iteration: int, tokens: int, removal: Removal, arch: Arch, **extra) -> dict:
    """One line of `pruning_events.jsonl`: the removal and the shape right after it (`arch`):
    `heads`/`ffn` are per-layer means (the width of every layer under uniform pruning),
    `heads_per_layer`/`ffn_per_layer` the widths; `extra` adds fields (the OBS update's
    reconstruction errors, an adaptive increment's layer cosines and sparsities)."""
    layers = range(arch.num_layers)
    return {"iteration": iteration, "tokens": tokens, **removal.to_dict(), "params": arch.num_params(),
            "heads": layer_mean(arch.num_heads(l) for l in layers), "kv_heads": [arch.num_kv_heads(l) for l in layers],
            "ffn": layer_mean(arch.ffn), "hidden": arch.hidden_size,
            "heads_per_layer": [arch.num_heads(l) for l in layers], "ffn_per_layer": list(arch.ffn), **extra}


def widths(values: Iterable[int]) -> str:
    """A width for the progress line: `8` when every layer has it, else `min-max`."""
    values = list(values)
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def shape_line(arch: Arch, target: int) -> str:
    """The shape after a removal, for its printed line."""
    reached = " (target reached)" if arch.num_params() <= target else ""
    layers = range(arch.num_layers)
    return (f"{arch.num_params():,} params, heads {widths(arch.num_heads(l) for l in layers)}, "
            f"ffn {widths(arch.ffn)}, hidden {arch.hidden_size}{reached}")


def shape_summary(arch: Arch) -> str:
    """The shape for the periodic progress line."""
    layers = range(arch.num_layers)
    return (f"params {arch.num_params() / 1e6:.2f}M heads {widths(arch.num_heads(l) for l in layers)} "
            f"kv {widths(arch.num_kv_heads(l) for l in layers)} ffn {widths(arch.ffn)} "
            f"hidden {arch.hidden_size}")


class EventLog:
    """`pruning_events.jsonl`, written by global rank 0 (no file: nothing written)."""

    def __init__(self, path: Optional[str], writer: bool):
        self.path, self.writer = path, writer

    def truncate(self, iteration: int) -> None:
        """Drop logged removals after `iteration` (a resumed run makes them again)."""
        if self.writer:
            truncate_jsonl(self.path, iteration)

    def append(self, event: dict) -> None:
        if self.writer and self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(event) + "\n")
            fault_injection.point("events.after_write")
