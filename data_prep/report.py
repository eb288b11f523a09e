"""The live progress line and number formatting shared by the data_prep commands."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def human(n: float) -> str:
    """12345678 -> "12.3M" (three significant digits; k, M, B, T)."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def human_bytes(n: float) -> str:
    """Bytes in B, KB, MB, GB, TB (powers of 1000, as disk sizes are quoted)."""
    for scale, suffix in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{int(n)} B"


def duration(seconds: float) -> str:
    """Seconds -> "1:02:03" / "2:03"."""
    seconds = int(round(max(seconds, 0)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """One throttled status line on stderr: shards, docs/s, tokens/s, percentage and ETA.

    On a terminal the line is redrawn in place; in a log it is appended every `interval` s.
    """

    def __init__(self, total_units: int, total_shards: int, done_units: int = 0, done_shards: int = 0,
                 interval: float = 2.0, stream: Optional[TextIO] = None, label: str = "tokenize"):
        self.total_units, self.total_shards = max(total_units, 1), total_shards
        self.units, self.shards = done_units, done_shards
        self.start_units = done_units
        self.docs = self.tokens = 0
        self.interval, self.label = interval, label
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self.last = time.monotonic()
        self._printed = False

    def add(self, docs: int, tokens: int, units: int) -> None:
        self.docs += docs
        self.tokens += tokens
        self.units += units

    def shard_done(self) -> None:
        self.shards += 1

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.units - self.start_units) / elapsed
        left = self.total_units - self.units
        eta = duration(left / rate) if rate > 0 else "?"
        pct = 100.0 * self.units / self.total_units
        return (f"{self.label}: {pct:5.1f}% | shards {self.shards}/{self.total_shards} | "
                f"{self.docs:,} docs {human(self.docs / elapsed)}/s | {self.tokens:,} tokens "
                f"{human(self.tokens / elapsed)}/s | {duration(elapsed)} elapsed, ETA {eta}")

    def maybe_print(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._printed = True

    def finish(self) -> None:
        """End the in-place line on a terminal."""
        if self.tty and self._printed:
            self.stream.write("\n")
            self.stream.flush()
