"""Shard planning and reading: byte ranges own every line exactly once; progress reaches 100%."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from data_prep.readers import ShardReader
from data_prep.shards import plan_shards


def _lines(n: int, seed: int = 0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if rng.random() < 0.1:
            out.append(b"")  # blank lines count as lines, not records
        else:
            out.append(json.dumps({"text": f"doc {i} " + "x" * rng.randint(0, 300)}).encode())
    return out


@pytest.mark.parametrize("shard_bytes", [1, 7, 100, 1000, 1 << 20])
@pytest.mark.parametrize("trailing_newline", [True, False])
def test_byte_ranges_own_each_line_once(tmp_path, shard_bytes, trailing_newline):
    lines = _lines(300)
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"\n" if trailing_newline else b""))
    seen, total_lines = [], 0
    for shard in plan_shards([str(path)], shard_bytes, ["text"]):
        reader = ShardReader(shard, ["text"])
        records = list(reader)
        if records:  # the lines of earlier shards, counted from the file itself (--strict uses it)
            assert reader.line_offset() == total_lines
        seen += [(total_lines + n, values[0]) for n, values in records]
        total_lines += reader.lines_read
        assert reader.units_done() == shard.end - shard.start
    expected = [(i + 1, json.loads(line)["text"]) for i, line in enumerate(lines) if line]
    assert seen == expected and total_lines == len(lines)


@pytest.mark.parametrize("kind", ["gz", "zst"])
def test_compressed_shard_reads_all_lines_and_reports_full_progress(tmp_path, kind):
    import zstandard

    lines = _lines(500, seed=1)
    raw = b"\n".join(lines) + b"\n"
    path = tmp_path / f"c.jsonl.{kind}"
    if kind == "gz":
        path.write_bytes(gzip.compress(raw))
    else:  # two frames, as concatenated .zst files are
        c = zstandard.ZstdCompressor()
        path.write_bytes(c.compress(raw[:5000]) + c.compress(raw[5000:]))
    (shard,) = plan_shards([str(path)], 100, ["text"])
    reader = ShardReader(shard, ["text"])
    records = list(reader)
    assert [v[0] for _, v in records] == [json.loads(line)["text"] for line in lines if line]
    assert reader.lines_read == len(lines)
    assert reader.units_done() == shard.units  # after the file is closed, too
