"""Input files -> an ordered list of shards, the same whatever the number of workers.

A shard is the unit of work, of restart and of merging. Plain JSON-lines files are cut
into byte ranges of `--shard-bytes`; a range owns the lines that *start* inside it, so
ranges can be planned from the file size alone and every line belongs to exactly one
shard. A compressed file cannot be entered in the middle and is one shard; a Parquet
file gives one shard per row group. Output = shards concatenated in plan order.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from pap.errors import PapError

JSONL, GZIP, ZSTD, PARQUET = "jsonl", "jsonl.gz", "jsonl.zst", "parquet"
_KINDS = [(s, JSONL) for s in (".jsonl", ".json", ".ndjson")] + \
         [(s + c, k) for s in (".jsonl", ".json", ".ndjson") for c, k in ((".gz", GZIP), (".zst", ZSTD))] + \
         [(".parquet", PARQUET)]


def file_kind(path: str) -> Optional[str]:
    """The input kind of `path` by its name, or None if it is not a supported input."""
    for suffix, kind in sorted(_KINDS, key=lambda x: -len(x[0])):
        if path.endswith(suffix):
            return kind
    return None


def parse_size(text: str) -> int:
    """`256M`, `1.5G`, `4096` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not m:
        raise PapError(f"--shard-bytes {text!r}: expected a size such as 256M or 1G")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    value = int(float(m.group(1)) * scale)
    if value < 1:
        raise PapError(f"--shard-bytes {text!r}: must be at least one byte")
    return value


MIN_AUTO_SHARD, MAX_AUTO_SHARD = 1 << 20, 128 << 20


def auto_shard_bytes(files: Sequence[str]) -> int:
    """Default shard size: about 1,000 shards over the plain JSON-lines input, 1 MiB to 128 MiB.

    It depends on the inputs only, never on --workers, so a rerun with another worker count
    still finds its finished shards. A thousand shards keep any realistic number of workers
    busy to the end; 1 MiB keeps the per-shard cost (a few files, milliseconds) negligible.
    """
    total = sum(os.path.getsize(f) for f in files if file_kind(f) == JSONL)
    return min(max(total // 1000, MIN_AUTO_SHARD), MAX_AUTO_SHARD)


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Files named by paths, globs and directories, in the order given (each glob sorted)."""
    files: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(str(p) for p in Path(pattern).rglob("*") if p.is_file() and file_kind(str(p)))
            if not found:
                raise PapError(f"--input {pattern}: directory holds no .jsonl, .jsonl.gz, .jsonl.zst or .parquet files")
        elif glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not found:
                raise PapError(f"--input {pattern}: matches no files")
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            raise PapError(f"--input {pattern}: no such file")
        for path in found:
            if file_kind(path) is None:
                raise PapError(f"--input {path}: unsupported file type (use .jsonl/.json, .jsonl.gz, "
                               f".jsonl.zst or .parquet)")
            if path not in files:
                files.append(path)
    return files


@dataclass(frozen=True)
class Shard:
    """One unit of work. `start`/`end` are bytes (JSON lines) or a row group (Parquet)."""

    index: int
    path: str  # as the user gave it (shown in messages)
    kind: str
    start: int
    end: int
    file_size: int
    mtime_ns: int
    units: int  # size for progress and ETA: bytes of the input it covers
    first_line: Optional[int]  # lines/rows of the file before this shard, when known at plan time

    def identity(self) -> dict:
        """What must be unchanged for a finished shard to be reused on resume."""
        d = asdict(self)
        d["path"] = os.path.abspath(self.path)
        return d

    def location(self, line: int, offset: int) -> str:
        """`file:line` (1-based) for JSON lines, `file:row N` (0-based) for Parquet."""
        if self.kind == PARQUET:
            return f"{self.path}:row {offset + line - 1}"
        return f"{self.path}:{offset + line}"


def _stat(path: str):
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _parquet_shards(path: str, keys: Sequence[str], size: int, mtime: int, first_index: int) -> List[Shard]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for damaged files
        raise PapError(f"{path}: not a readable Parquet file ({exc})") from None
    names = set(meta.schema.names)
    missing = [k for k in keys if k not in names]
    if missing:
        raise PapError(f"{path}: no column {', '.join(map(repr, missing))} for --json-keys "
                       f"(columns: {', '.join(sorted(names))})")
    shards, row = [], 0
    for rg in range(meta.num_row_groups):
        group = meta.row_group(rg)
        units = sum(group.column(c).total_compressed_size for c in range(group.num_columns))
        shards.append(Shard(first_index + len(shards), path, PARQUET, rg, rg + 1, size, mtime, max(units, 1), row))
        row += group.num_rows
    return shards


def plan_shards(files: Sequence[str], shard_bytes: int, keys: Sequence[str]) -> List[Shard]:
    """The shards of `files`, numbered in order."""
    shards: List[Shard] = []
    for path in files:
        kind = file_kind(path)
        size, mtime = _stat(path)
        if kind == JSONL:
            for start in range(0, max(size, 1), shard_bytes):
                end = min(start + shard_bytes, size)
                shards.append(Shard(len(shards), path, kind, start, end, size, mtime, max(end - start, 1),
                                    0 if start == 0 else None))
        elif kind in (GZIP, ZSTD):
            shards.append(Shard(len(shards), path, kind, 0, size, size, mtime, max(size, 1), 0))
        else:
            shards.extend(_parquet_shards(path, keys, size, mtime, len(shards)))
    return shards


def plan_digest(shards: Sequence[Shard]) -> str:
    """A short hash of the plan (which inputs, which sizes and dates)."""
    blob = json.dumps([s.identity() for s in shards], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def count_lines_before(path: str, offset: int) -> int:
    """Newlines in the first `offset` bytes of `path` (for absolute line numbers on demand)."""
    count, left = 0, offset
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 24))
            if not chunk:
                break
            count += chunk.count(b"\n")
            left -= len(chunk)
    return count
