"""Rank-0 console progress and TensorBoard scalars with Megatron-LM's names."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

from pap import fault_injection


def truncate_jsonl(path: Optional[str], iteration: int) -> None:
    """Keep the records of `path` up to `iteration` (a resumed run writes the later ones again).

    A half-written last line, left by a process killed mid-write, goes too. The file is
    replaced atomically, so a crash here loses nothing.
    """
    if not path or not os.path.isfile(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("iteration", 0) <= iteration:
                kept.append(line if line.endswith("\n") else line + "\n")
    staging = f"{path}.tmp"
    with open(staging, "w") as f:
        f.writelines(kept)
    os.replace(staging, path)


def format_elapsed(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """One line per log interval on rank 0; TensorBoard scalars on rank 0.

    Line: `iter N/T | tokens X | loss L | lr R | tok/s S | elapsed H:MM:SS`.
    Scalars: `lm loss`, `learning-rate`, `grad-norm`, `iteration-time`, `throughput`
    (TFLOP/s per device, as Megatron-LM), `tokens-per-sec`, `lm loss validation`.
    """

    def __init__(self, is_writer: bool, total_iters: int, tensorboard_dir: Optional[str],
                 metrics_file: Optional[str] = None):
        self.enabled = is_writer
        self.total_iters = total_iters
        self.start = time.time()
        self.writer = None
        self.metrics = None
        if is_writer and tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=tensorboard_dir, max_queue=100)
        if is_writer and metrics_file:
            self.metrics = open(metrics_file, "a")

    def print(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)

    def train_line(self, iteration: int, tokens: int, loss: float, lr: float, tokens_per_sec: float,
                   extra: str = "") -> None:
        width = len(str(self.total_iters))
        self.print(
            f"iter {iteration:>{width}}/{self.total_iters} | tokens {tokens:,} | loss {loss:.4f} | "
            f"lr {lr:.3e} | tok/s {tokens_per_sec:,.0f} | elapsed {format_elapsed(time.time() - self.start)}"
            + (f" | {extra}" if extra else "")
        )

    def scalars(self, iteration: int, values: dict) -> None:
        """TensorBoard scalars plus one JSON line (exact floats, for scripts and tests)."""
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, iteration)
        if self.metrics is not None:
            self.metrics.write(json.dumps({"iteration": iteration, **values}) + "\n")
            self.metrics.flush()
            fault_injection.point("metrics.after_write")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        sys.stdout.flush()
