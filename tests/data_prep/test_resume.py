"""Killed at any moment and run again, tokenize finishes with the bytes of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.data_prep.conftest import output_bytes, write_jsonl

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory, docs):
    """About 5 MB (the corpus six times over): 80 shards of 64 KB."""
    return write_jsonl(tmp_path_factory.mktemp("big") / "big.jsonl", docs * 6)


def test_sigkill_then_rerun_gives_identical_bytes(tmp_path, big_corpus, hf_json, run_tokenize):
    common = ["--input", big_corpus, "--tokenizer", hf_json, "--append-eod", "--shard-bytes", "64K"]
    rc, _, err = run_tokenize(*common, "--output-prefix", tmp_path / "ref", "--workers", 2)
    assert rc == 0, err
    reference = output_bytes(str(tmp_path / "ref_text_document"))

    prefix = tmp_path / "out"
    args = [*common, "--output-prefix", str(prefix), "--workers", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "data_prep.tokenize", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = Path(f"{prefix}.partial")
    deadline = time.time() + 120
    try:
        while not list(partial.glob("*.done.json")):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no shard finished in time"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = len(list(partial.glob("*.done.json")))
    assert 1 <= done < 80
    for suffix in (".bin", ".idx", ".meta.json"):  # nothing half-made under the final names
        assert not os.path.exists(f"{prefix}_text_document{suffix}")

    rc, out, err = run_tokenize(*args)
    assert rc == 0, err
    assert "already done" in err and "shards reused from an earlier run" in out
    assert output_bytes(f"{prefix}_text_document") == reference
    assert not partial.exists()


def test_unfinished_run_with_other_settings_is_refused_then_overwritten(tmp_path, docs, hf_json, run_tokenize):
    corpus = tmp_path / "c.jsonl"
    write_jsonl(corpus, docs[:50] + ["\ud800"] + docs[50:])  # a lone surrogate: stops --strict
    prefix = tmp_path / "out"
    common = ["--input", corpus, "--output-prefix", prefix, "--tokenizer", hf_json, "--shard-bytes", "16K"]
    rc, _, err = run_tokenize(*common, "--strict", "--workers", 1)
    assert rc == 2 and ":51: invalid utf8" in err
    assert Path(f"{prefix}.partial").is_dir()  # finished shards are kept for a rerun
    rc, _, err = run_tokenize(*common, "--append-eod")
    assert rc == 2 and "unfinished run with other settings (append_eod, eod, strict)" in err
    rc, _, err = run_tokenize(*common, "--append-eod", "--overwrite")
    assert rc == 0, err
    rc, _, err = run_tokenize("--input", corpus, "--output-prefix", tmp_path / "fresh", "--tokenizer", hf_json,
                              "--append-eod")
    assert output_bytes(f"{prefix}_text_document") == output_bytes(f"{tmp_path}/fresh_text_document")


def test_changed_input_file_redoes_only_its_shards(tmp_path, docs, hf_json, run_tokenize):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl(a, docs[:200])
    write_jsonl(b, docs[200:] + ["\ud800"])
    prefix = tmp_path / "out"
    common = ["--input", a, b, "--output-prefix", prefix, "--tokenizer", hf_json, "--strict", "--workers", 1]
    rc, _, err = run_tokenize(*common)
    assert rc == 2 and f"{b}:" in err
    write_jsonl(b, docs[200:])  # fixed
    rc, out, err = run_tokenize(*common)
    assert rc == 0, err
    assert "1 of 2 shards reused" in out
    rc, _, err = run_tokenize("--input", a, b, "--output-prefix", tmp_path / "fresh", "--tokenizer", hf_json)
    assert output_bytes(f"{prefix}_text_document") == output_bytes(f"{tmp_path}/fresh_text_document")


def test_second_run_on_the_same_prefix_is_refused_while_one_is_active(tmp_path, corpus, hf_json, run_tokenize):
    import fcntl

    partial = tmp_path / "out.partial"
    partial.mkdir()
    fd = os.open(partial / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running tokenize holds it
    try:
        rc, _, err = run_tokenize("--input", corpus, "--output-prefix", tmp_path / "out", "--tokenizer", hf_json)
    finally:
        os.close(fd)
    assert rc == 2 and "in use by another data_prep.tokenize run" in err
