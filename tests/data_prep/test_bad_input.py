"""Bad records are skipped and counted with file:line, or stop the run under --strict;
bad arguments stop it before any work, with one `error:` line."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from tests.data_prep.conftest import read_documents, write_jsonl

GOOD = json.dumps({"text": "def f(x):\n    return x + 1\n"}).encode()
# (line content, reason); each is line 2 of its file in the --strict cases.
BAD = {
    "malformed_json": b'{"text": "unterminated',
    "not_an_object": b'["text", "a list"]',
    "missing_key": b'{"body": "no text field"}',
    "null_value": b'{"text": null}',
    "not_text": b'{"text": 42}',
    "empty": b'{"text": ""}',
    "invalid_utf8": b'{"text": "caf\xe9"}',
    "lone_surrogate": b'{"text": "bad \\ud800 escape"}',
}
REASON = {"not_an_object": "malformed_json", "null_value": "missing_key", "lone_surrogate": "invalid_utf8"}


def _error_line(err: str) -> str:
    """The one `error:` line (the run prints a plan line on stderr before it)."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _write(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def test_bad_records_are_skipped_counted_and_located(tmp_path, hf_json, run_tokenize):
    lines = [GOOD]
    for content in BAD.values():
        lines += [content, b"", GOOD]  # blank lines are not records and not errors
    corpus = _write(tmp_path / "bad.jsonl", lines)
    prefix = tmp_path / "out"
    rc, out, err = run_tokenize("--input", corpus, "--output-prefix", prefix, "--tokenizer", hf_json,
                                "--append-eod", "--shard-bytes", "40", "--workers", 2)
    assert rc == 0, err
    from tokenizers import Tokenizer

    good = Tokenizer.from_file(hf_json).encode(json.loads(GOOD)["text"]).ids + [0]
    assert read_documents(f"{prefix}_text_document") == [good] * (len(BAD) + 1)
    meta = json.load(open(f"{prefix}_text_document.meta.json"))
    assert meta["skipped"] == {"malformed_json": 2, "missing_key": 2, "not_text": 1, "empty": 1, "invalid_utf8": 2}
    assert "8 skipped (2 malformed_json, 2 invalid_utf8, 2 missing_key, 1 not_text, 1 empty)" in out
    # Line 1 is good; bad record k sits at line 2 + 3k, across shards of 40 bytes.
    for k, name in enumerate(BAD):
        assert f"{corpus}:{2 + 3 * k}: {REASON.get(name, name)}:" in out, name


@pytest.mark.parametrize("name", list(BAD))
def test_strict_stops_at_the_bad_record(tmp_path, hf_json, run_tokenize, name):
    corpus = _write(tmp_path / "c.jsonl", [GOOD] * 30 + [BAD[name]] + [GOOD] * 3)
    prefix = tmp_path / "out"
    rc, out, err = run_tokenize("--input", corpus, "--output-prefix", prefix, "--tokenizer", hf_json,
                                "--append-eod", "--strict", "--shard-bytes", "200", "--workers", 2)
    assert rc == 2
    assert _error_line(err).startswith(f"error: {corpus}:31: {REASON.get(name, name).replace('_', ' ')}")
    assert not os.path.exists(f"{prefix}_text_document.bin") and not os.path.exists(f"{prefix}_text_document.idx")


def test_strict_stops_on_compressed_and_parquet_inputs(tmp_path, hf_json, run_tokenize):
    import pyarrow as pa
    import pyarrow.parquet as pq

    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(b"\n".join([GOOD, GOOD, BAD["not_text"]]) + b"\n"))
    rc, _, err = run_tokenize("--input", gz, "--output-prefix", tmp_path / "a", "--tokenizer", hf_json, "--strict")
    assert rc == 2 and _error_line(err).startswith(f"error: {gz}:3: not text")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c", "", "d"]}), parquet, row_group_size=2)
    rc, _, err = run_tokenize("--input", parquet, "--output-prefix", tmp_path / "b", "--tokenizer", hf_json,
                              "--strict")
    assert rc == 2 and _error_line(err).startswith(f"error: {parquet}:row 3: empty")


def _assert_refused(run_tokenize, tmp_path, args, message):
    prefix = tmp_path / "out"
    rc, out, err = run_tokenize("--output-prefix", prefix, *args)
    assert rc == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not os.path.exists(f"{prefix}.partial"), "work started before the error"


def test_unknown_or_unusable_tokenizer_is_refused_before_work(tmp_path, corpus, run_tokenize):
    _assert_refused(run_tokenize, tmp_path, ["--input", corpus, "--tokenizer", tmp_path / "nope"],
                    "no such file or directory")
    (tmp_path / "empty_dir").mkdir()
    _assert_refused(run_tokenize, tmp_path, ["--input", corpus, "--tokenizer", tmp_path / "empty_dir"],
                    "no tokenizer.json")
    (tmp_path / "broken.json").write_text("{}")
    _assert_refused(run_tokenize, tmp_path, ["--input", corpus, "--tokenizer", tmp_path / "broken.json"],
                    "not a Hugging Face tokenizer.json")
    (tmp_path / "broken.model").write_bytes(b"\x00garbage")
    _assert_refused(run_tokenize, tmp_path, ["--input", corpus, "--tokenizer", tmp_path / "broken.model"],
                    "not a SentencePiece model")
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    _assert_refused(run_tokenize, tmp_path, ["--input", corpus, "--tokenizer", tmp_path / "vocab.txt"],
                    "expected a Hugging Face tokenizer directory")


def test_eod_and_type_problems_are_refused_before_work(tmp_path, corpus, hf_json, run_tokenize):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "noeos.json"))
    _assert_refused(run_tokenize, tmp_path, ["--input", corpus, "--tokenizer", tmp_path / "noeos.json",
                                             "--append-eod"], "names no end-of-document token")
    _assert_refused(run_tokenize, tmp_path, ["--input", corpus, "--tokenizer", hf_json, "--append-eod",
                                             "--eod-token", "<nope>"], "'<nope>' is not in the vocabulary")
    _assert_refused(run_tokenize, tmp_path, ["--input", corpus, "--tokenizer", hf_json,
                                             "--tokenizer-type", "SentencePieceTokenizer"], "does not match")


def test_input_problems_are_refused_before_work(tmp_path, hf_json, run_tokenize):
    _assert_refused(run_tokenize, tmp_path, ["--input", str(tmp_path / "*.jsonl"), "--tokenizer", hf_json],
                    "matches no files")
    _assert_refused(run_tokenize, tmp_path, ["--input", tmp_path / "missing.jsonl", "--tokenizer", hf_json],
                    "no such file")
    (tmp_path / "data.csv").write_text("a,b\n")
    _assert_refused(run_tokenize, tmp_path, ["--input", tmp_path / "data.csv", "--tokenizer", hf_json],
                    "unsupported file type")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "p.parquet")
    _assert_refused(run_tokenize, tmp_path, ["--input", tmp_path / "p.parquet", "--tokenizer", hf_json],
                    "no column 'text'")
    _assert_refused(run_tokenize, tmp_path, ["--input", tmp_path / "p.parquet", "--tokenizer", hf_json,
                                             "--shard-bytes", "lots"], "expected a size")


def test_damaged_compressed_input_is_an_error(tmp_path, hf_json, run_tokenize):
    import zstandard

    raw = b"\n".join(json.dumps({"text": f"line {i} " * (i % 50)}).encode() for i in range(2000))
    gz, zst = tmp_path / "c.jsonl.gz", tmp_path / "c.jsonl.zst"
    packed_gz, packed_zst = gzip.compress(raw), zstandard.ZstdCompressor().compress(raw)
    gz.write_bytes(packed_gz[: len(packed_gz) // 2])  # truncated downloads
    zst.write_bytes(packed_zst[: len(packed_zst) // 2])
    for path, name in ((gz, "gz"), (zst, "zst")):
        rc, _, err = run_tokenize("--input", path, "--output-prefix", tmp_path / name, "--tokenizer", hf_json)
        assert rc == 2 and _error_line(err).startswith(f"error: {path}: damaged or truncated {name} stream")
        assert not os.path.exists(tmp_path / f"{name}_text_document.bin")


def test_all_records_bad_is_an_error(tmp_path, hf_json, run_tokenize):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["a", "b"], key="body")
    rc, _, err = run_tokenize("--input", corpus, "--output-prefix", tmp_path / "out", "--tokenizer", hf_json)
    assert rc == 2 and "no documents for 'text': 2 skipped (2 missing_key)" in _error_line(err)
    assert f"first at {corpus}:1" in err


@pytest.mark.parametrize("content", [b"", b"\n\n"])
def test_an_input_without_records_is_named(tmp_path, hf_json, run_tokenize, content):
    """An empty input file (or one of blank lines only): the one `error:` line names the file."""
    corpus = tmp_path / "empty.jsonl"
    corpus.write_bytes(content)
    rc, out, err = run_tokenize("--input", corpus, "--output-prefix", tmp_path / "out", "--tokenizer", hf_json)
    line = _error_line(err)
    assert rc == 2 and str(corpus) in line, line
    assert ("is empty" in line) == (content == b"")
