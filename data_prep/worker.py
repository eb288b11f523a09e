"""Tokenize one shard into its own `.bin/.idx` per JSON key, then mark it done.

Runs in worker processes (one tokenizer each, one thread each). A shard's files are
renamed into place before its done marker is written, and the marker is written by a
rename too, so a marker always describes complete files: the parent may be killed at
any moment and a rerun trusts exactly the shards that have one.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from pap.errors import PapError

from data_prep.readers import EMPTY, INVALID_UTF8, ShardReader, Skip
from data_prep.shards import Shard
from data_prep.tokenizer_loader import TokenizerSpec, limit_threads
from data_prep.writer import ShardWriter, write_json_atomic

# Texts handed to the tokenizer per call: large enough to amortise the call, small
# enough that progress stays smooth and memory stays low.
BATCH_CHARS = 1 << 20
BATCH_DOCS = 1024
EXAMPLES_PER_REASON = 3
REPORT_SECONDS = 0.5


class StrictError(PapError):
    """A bad record under --strict."""


@dataclass(frozen=True)
class Job:
    """What every shard of a run shares."""

    workdir: str
    keys: tuple
    tokenizer: TokenizerSpec
    append_eod: bool
    dtype: type
    strict: bool


def shard_prefix(workdir: str, index: int, key: str) -> str:
    return os.path.join(workdir, f"{index:06d}_{key}")


def marker_path(workdir: str, index: int) -> Path:
    return Path(workdir) / f"{index:06d}.done.json"


def read_marker(workdir: str, shard: Shard) -> Optional[dict]:
    """The done marker of `shard` if it matches the shard and its files are all there."""
    path = marker_path(workdir, shard.index)
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if marker.get("shard") != shard.identity():
        return None  # the input changed since: redo this shard
    for key, out in marker.get("outputs", {}).items():
        prefix = shard_prefix(workdir, shard.index, key)
        for suffix in (".bin", ".idx"):
            try:
                if os.path.getsize(prefix + suffix) != out[suffix[1:] + "_bytes"]:
                    return None
            except OSError:
                return None
    return marker


class _Worker:
    """Per-process state: set up once by `init`, used by `run_shard` for every shard."""

    job: Job
    tokenizer = None
    progress = None  # multiprocessing queue of (docs, tokens, units) increments, or None
    abort = None  # multiprocessing event: stop early when set


def init(job: Job, progress, abort, close_fd: Optional[int] = None) -> None:
    """Worker process initializer."""
    limit_threads()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides how to stop
    _die_with_parent()
    if close_fd is not None:  # the parent's run lock: a leftover worker must not hold it
        try:
            os.close(close_fd)
        except OSError:
            pass
    _Worker.job, _Worker.progress, _Worker.abort = job, progress, abort
    _Worker.tokenizer = job.tokenizer.load()


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the parent dies (kill -9 included)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_shard(shard: Shard) -> dict:
    """Process one shard in a worker set up by `init`; returns its done marker."""
    return ShardJob(_Worker.job, _Worker.tokenizer, shard, _Worker.progress, _Worker.abort).run()


class ShardJob:
    """Read, tokenize and write one shard."""

    def __init__(self, job: Job, tokenizer, shard: Shard, progress=None, abort=None):
        self.job, self.tokenizer, self.shard = job, tokenizer, shard
        self.progress, self.abort = progress, abort
        self.reader = ShardReader(shard, job.keys)
        self.skipped: Dict[str, Dict[str, int]] = {k: {} for k in job.keys}
        self.examples: List[list] = []
        self.pending: Dict[str, list] = {k: [] for k in job.keys}  # (line, text)
        self.pending_chars = 0
        self._reported = (0, 0, 0)
        self._last_report = time.monotonic()

    def run(self) -> dict:
        job, shard = self.job, self.shard
        start = time.time()
        handed_back = self.tokenizer.handed_back
        self.writers = {k: ShardWriter(shard_prefix(job.workdir, shard.index, k), job.dtype) for k in job.keys}
        try:
            lines = self._read_all()
        except BaseException:
            for w in self.writers.values():
                w.abort()
            raise
        outputs = {}
        for key, writer in self.writers.items():
            writer.close()
            outputs[key] = {"documents": writer.documents, "tokens": writer.tokens, "skipped": self.skipped[key],
                            "bin_bytes": os.path.getsize(writer.prefix + ".bin"),
                            "idx_bytes": os.path.getsize(writer.prefix + ".idx")}
        self._report(force=True)
        marker = {"shard": shard.identity(), "lines": lines, "outputs": outputs,
                  "examples": sorted(self.examples, key=lambda e: e[2]), "seconds": round(time.time() - start, 3),
                  "library_texts": self.tokenizer.handed_back - handed_back}
        write_json_atomic(marker_path(job.workdir, shard.index), marker)
        return marker

    def _read_all(self) -> int:
        for line, values in self.reader:
            for key, value in zip(self.job.keys, values):
                if isinstance(value, Skip):
                    self._skip(key, value, line)
                else:
                    self.pending[key].append((line, value))
                    self.pending_chars += len(value)
            if self.pending_chars >= BATCH_CHARS or len(self.pending[self.job.keys[0]]) >= BATCH_DOCS:
                self._flush()
                if self.abort is not None and self.abort.is_set():
                    raise PapError("stopped")
        self._flush()
        # Lines the reader consumed, blank ones included: the line offset of the next shard.
        return self.reader.lines_read

    def _flush(self) -> None:
        eod = self.job.tokenizer.eod if self.job.append_eod else None
        for key, items in self.pending.items():
            if not items:
                continue
            encoded = self.tokenizer.encode_batch([text for _, text in items])
            writer = self.writers[key]
            for (line, _), ids in zip(items, encoded):
                if ids is None:
                    self._skip(key, Skip(INVALID_UTF8, f"{key!r} is not valid Unicode (lone surrogate escape)"), line)
                elif not ids:
                    self._skip(key, Skip(EMPTY, f"{key!r} gives no tokens"), line)
                else:
                    if eod is not None:
                        ids.append(eod)
                    writer.add(ids)
            items.clear()
        self.pending_chars = 0
        self._report()

    def _skip(self, key: str, skip: Skip, line: int) -> None:
        if self.job.strict:
            where = self.shard.location(line, self.reader.line_offset())
            raise StrictError(f"{where}: {skip.reason.replace('_', ' ')}: {skip.detail} (--strict)")
        counts = self.skipped[key]
        counts[skip.reason] = counts.get(skip.reason, 0) + 1
        if counts[skip.reason] <= EXAMPLES_PER_REASON:
            self.examples.append([key, skip.reason, line, skip.detail[:200]])

    def _report(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_report < REPORT_SECONDS:
            return
        docs = sum(w.documents for w in self.writers.values())
        tokens = sum(w.tokens for w in self.writers.values())
        units = self.shard.units if force else self.reader.units_done()
        d = (docs - self._reported[0], tokens - self._reported[1], units - self._reported[2])
        self._reported, self._last_report = (docs, tokens, units), now
        self.progress.put(d)
