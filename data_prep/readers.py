"""Read the records of one shard: `(line, values)` with one text or `Skip` per JSON key.

Bad records are data, not exceptions: a line that is not UTF-8 or not a JSON object, a
missing or null key, a value that is not a string, an empty string each come back as a
`Skip(reason, detail)` so the caller can count them (or stop, under `--strict`). Blank
lines are not records. A damaged compressed stream or Parquet file is a `PapError`.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Iterator, List, NamedTuple, Sequence, Tuple, Union

from pap.errors import PapError

from data_prep.shards import GZIP, JSONL, PARQUET, Shard, count_lines_before

MALFORMED_JSON = "malformed_json"
INVALID_UTF8 = "invalid_utf8"
MISSING_KEY = "missing_key"
NOT_TEXT = "not_text"
EMPTY = "empty"
REASONS = (MALFORMED_JSON, INVALID_UTF8, MISSING_KEY, NOT_TEXT, EMPTY)


class Skip(NamedTuple):
    reason: str
    detail: str


Value = Union[str, Skip]


def text_value(value, key: str) -> Value:
    """The document text in a record's field, or why there is none."""
    if value is None:
        return Skip(MISSING_KEY, f"no {key!r}")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Skip(INVALID_UTF8, f"{key!r} is not UTF-8 (byte {exc.start})")
    if not isinstance(value, str):
        return Skip(NOT_TEXT, f"{key!r} is not a string ({type(value).__name__})")
    if not value:
        return Skip(EMPTY, f"{key!r} is empty")
    return value


def parse_json_line(raw: bytes, keys: Sequence[str]) -> List[Value]:
    """One JSON-lines record -> a value per key."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [Skip(INVALID_UTF8, f"not UTF-8 (byte {exc.start})")] * len(keys)
    try:
        record = json.loads(line)
    except ValueError as exc:
        return [Skip(MALFORMED_JSON, str(exc))] * len(keys)
    if not isinstance(record, dict):
        return [Skip(MALFORMED_JSON, f"a JSON {type(record).__name__}, not an object")] * len(keys)
    return [text_value(record.get(key), key) for key in keys]


def _first_line_start(path: str, start: int) -> int:
    """Where the first line starting at or after byte `start` begins: the line running
    across `start` belongs to the shard before."""
    if start == 0:
        return 0
    with open(path, "rb") as f:
        f.seek(start - 1)
        if f.read(1) == b"\n":
            return start
        return start + len(f.readline())


def _zstd_blocks(raw) -> Iterator[bytes]:
    """Decompressed blocks of a (multi-frame) zstd file; a truncated frame is an error.

    zstandard's stream_reader ends quietly in the middle of a cut frame, which would turn
    a broken download into a silently shorter dataset.
    """
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    dobj, in_frame = dctx.decompressobj(), False
    while True:
        chunk = raw.read(1 << 20)
        if not chunk:
            break
        while chunk:
            in_frame = True
            block = dobj.decompress(chunk)
            if block:
                yield block
            chunk = b""
            if dobj.eof:  # a frame ended; the next may start in the same chunk
                chunk, dobj, in_frame = dobj.unused_data, dctx.decompressobj(), False
    if in_frame:
        raise EOFError("the file ends inside a zstd frame")


def _split_lines(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Lines (without their newline) of a stream given in blocks."""
    pending: List[bytes] = []
    for block in blocks:
        parts = block.split(b"\n")
        if len(parts) == 1:
            pending.append(block)
            continue
        if pending:
            parts[0] = b"".join(pending) + parts[0]
        pending = [parts.pop()]
        yield from parts
    tail = b"".join(pending)
    if tail:
        yield tail


class ShardReader:
    """Iterate `(line, values)` over one shard; `line` counts from 1 within the shard."""

    def __init__(self, shard: Shard, keys: Sequence[str]):
        self.shard = shard
        self.keys = list(keys)
        self._raw = None  # the file on disk, for progress through compressed inputs
        self._first_pos = _first_line_start(shard.path, shard.start) if shard.kind == JSONL else 0
        self._pos = self._first_pos
        self._rows_done = 0
        self._rows_total = 1
        self.lines_read = 0  # physical lines (or rows) consumed, blank lines included

    def units_done(self) -> int:
        """Progress through the shard in `shard.units`."""
        s = self.shard
        if s.kind == JSONL:  # the last line may run past the end of the range
            return min(self._pos - s.start, s.units)
        if s.kind == PARQUET:
            return s.units * self._rows_done // max(self._rows_total, 1)
        if self._raw is None:
            return 0
        return s.units if self._raw.closed else self._raw.tell()

    def line_offset(self) -> int:
        """Lines (or rows) of the file before this shard's first record."""
        if self.shard.first_line is not None:
            return self.shard.first_line
        return count_lines_before(self.shard.path, self._first_pos)

    def __iter__(self) -> Iterator[Tuple[int, List[Value]]]:
        if self.shard.kind == PARQUET:
            yield from self._parquet()
            return
        try:
            for number, raw in self._lines():
                self.lines_read = number
                if raw.strip():
                    yield number, parse_json_line(raw, self.keys)
        except OSError as exc:  # the file went away or cannot be read since the run started
            raise PapError(f"{self.shard.path}: cannot read ({exc.strerror or exc})") from None

    def _lines(self) -> Iterator[Tuple[int, bytes]]:
        s = self.shard
        if s.kind == JSONL:
            with open(s.path, "rb", buffering=1 << 20) as f:
                f.seek(self._first_pos)
                number = 0
                for raw in f:
                    if self._pos >= s.end:
                        break
                    self._pos += len(raw)
                    number += 1
                    yield number, raw
            return
        import zstandard

        with open(s.path, "rb") as self._raw:
            try:
                if s.kind == GZIP:  # GzipFile raises EOFError on a truncated file
                    yield from enumerate(gzip.GzipFile(fileobj=self._raw, mode="rb"), start=1)
                else:
                    yield from enumerate(_split_lines(_zstd_blocks(self._raw)), start=1)
            except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
                raise PapError(f"{s.path}: damaged or truncated {s.kind.split('.')[-1]} stream ({exc})") from None

    def _parquet(self) -> Iterator[Tuple[int, List[Value]]]:
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(self.shard.path).read_row_group(self.shard.start, columns=self.keys)
        except Exception as exc:  # ArrowInvalid, OSError, ...
            raise PapError(f"{self.shard.path}: cannot read row group {self.shard.start} ({exc})") from None
        columns = [table.column(key).to_pylist() for key in self.keys]
        self._rows_total = table.num_rows
        for row in range(table.num_rows):
            self._rows_done = self.lines_read = row + 1
            yield row + 1, [text_value(col[row], key) for col, key in zip(columns, self.keys)]
