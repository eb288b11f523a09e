"""data_prep.blend (shares -> Megatron blend, epochs), data_prep.inspect, and the embedded corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pap.config import parse_blend
from pap.errors import PapError

from data_prep import blend, inspect
from data_prep.writer import write_documents


@pytest.fixture
def two_datasets(tmp_path):
    """A: 10 documents of 100 tokens; B: 5 documents of 60 tokens."""
    a, b = str(tmp_path / "a_text_document"), str(tmp_path / "b_text_document")
    write_documents(a, [[1] * 100] * 10, np.uint16)
    write_documents(b, [[2] * 60] * 5, np.uint16)
    return a, b


def test_shares_tokens_and_epochs(two_datasets):
    a, b = two_datasets
    comps = blend.build([(8.0, a), (2.0, b + ".bin")])  # shares are normalised; suffixes are dropped
    assert [(c.prefix, c.share, c.tokens, c.documents) for c in comps] == [(a, 0.8, 1000, 10), (b, 0.2, 300, 5)]
    assert comps[0].epochs(10_000) == pytest.approx(8.0) and comps[1].epochs(10_000) == pytest.approx(2000 / 300)
    by_size = blend.build([(None, a), (None, b)])
    assert [c.share for c in by_size] == pytest.approx([1000 / 1300, 300 / 1300])
    assert by_size[0].epochs(1300) == pytest.approx(1.0) == by_size[1].epochs(1300)
    assert blend.parse_count("50B") == 50 * 10**9 and blend.parse_count("1.5T") == 1.5e12
    assert blend.parse_count("300000") == 300_000


def test_blend_cli_outputs_megatron_args_file_and_pap_yaml(tmp_path, two_datasets, capsys):
    a, b = two_datasets
    args_file = tmp_path / "mix.args"
    rc = blend.main(["--share", "0.8", a, "--share", "0.2", b, "--train-tokens", "10k", "--output", str(args_file)])
    out = capsys.readouterr().out
    assert rc == 0
    assert args_file.read_text() == f"0.8 {a} 0.2 {b}\n"
    assert f"--data-path 0.8 {a} 0.2 {b}" in out
    row_a = next(line for line in out.splitlines() if line.startswith(a))
    assert row_a.split()[1:] == ["10", "1k", "80.00%", "8k", "8", "(repeats)"]
    # The data-args file is what Megatron-LM reads with --data-args-path.
    from megatron.core.datasets.utils import get_blend_from_list

    assert get_blend_from_list(args_file.read_text().split()) == ([a, b], [0.8, 0.2])
    # The YAML snippet is a valid pap `data.blend`.
    snippet = yaml.safe_load(out[out.index("data:\n"):out.index("\n\nwrote")])
    assert parse_blend(snippet["data"]["blend"]) == ([a, b], [0.8, 0.2])


def test_blend_file_with_comments(tmp_path, two_datasets, capsys):
    a, b = two_datasets
    spec = tmp_path / "mix.blend"
    spec.write_text(f"# a comment\n3   {a}   # inline comment\n\n1 {b}\n")
    assert blend.read_blend_file(str(spec)) == [(3.0, a), (1.0, b)]
    assert blend.main(["--from", str(spec)]) == 0
    assert f"--data-path 0.75 {a} 0.25 {b}" in capsys.readouterr().out


def test_blend_errors(tmp_path, two_datasets, capsys):
    a, _ = two_datasets
    assert blend.main(["--share", "1", str(tmp_path / "missing")]) == 2
    assert "missing.idx: no such index" in capsys.readouterr().err
    assert blend.main(["--share", "x", a]) == 2
    assert "is not a number" in capsys.readouterr().err
    assert blend.main(["--share", "1", a, "--by-size", a]) == 2
    with pytest.raises(PapError, match="listed twice"):
        blend.build([(1.0, a), (1.0, a + ".idx")])


def test_smollm_blend_file_parses():
    from pathlib import Path

    pairs = blend.read_blend_file(str(Path(__file__).resolve().parents[2] / "configs" / "smollm.blend"))
    assert len(pairs) == 4 and sum(w for w, _ in pairs) == pytest.approx(1.0, abs=1e-3)
    assert [round(w / sum(w for w, _ in pairs) * 279.5, 1) for w, _ in pairs] == [220.0, 28.0, 4.0, 27.5]


def test_inspect_counts_lengths_and_decoded_sample(tmp_path, corpus, docs, hf_json, run_tokenize, capsys):
    prefix = tmp_path / "out"
    assert run_tokenize("--input", corpus, "--output-prefix", prefix, "--tokenizer", hf_json, "--append-eod")[0] == 0
    dataset = f"{prefix}_text_document"
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(hf_json)
    lengths = [len(tok.encode(d).ids) + 1 for d in docs]
    text = inspect.describe(dataset + ".idx", doc=3, chars=10_000)  # tokenizer found through the sidecar
    assert f"documents   {len(docs):,}\n" in text and f"tokens      {sum(lengths):,}\n" in text
    assert "dtype       uint16" in text
    assert (f"min {min(lengths):,}, mean {np.mean(lengths):,.1f}, median {int(np.median(lengths)):,}, "
            f"max {max(lengths):,} tokens") in text
    assert f"document 3 ({lengths[3]:,} tokens):" in text
    shown = text.split(f"document 3 ({lengths[3]:,} tokens):\n", 1)[1]
    assert shown == "  " + (docs[3] + "<|endoftext|>").replace("\n", "\n  ")
    # Without a tokenizer the ids are shown.
    json_meta = json.load(open(dataset + ".meta.json"))
    json_meta["tokenizer"] = str(tmp_path / "gone.json")
    open(dataset + ".meta.json", "w").write(json.dumps(json_meta))
    assert inspect.main([dataset, "--doc", "0"]) == 0
    assert f"ids {(tok.encode(docs[0]).ids + [0])[:64]}" in capsys.readouterr().out
    assert inspect.main([str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_embedded_corpus_still_writes_its_format(tmp_path):
    from data_prep import embedded_corpus
    from data_prep.writer import load_megatron
    from tokenizers import Tokenizer

    prefix = embedded_corpus.make(str(tmp_path / "emb"), vocab_size=300, max_files=12)
    meta = json.load(open(str(prefix) + ".meta.json"))
    assert meta["vocab_size"] == 300 and meta["dtype"] == "uint16" and meta["tokenizer"] == "tokenizer.json"
    tok = Tokenizer.from_file(str(tmp_path / "emb" / "tokenizer.json"))
    ds = load_megatron().IndexedDataset(str(prefix))
    assert len(ds) == meta["documents"] and int(ds.sequence_lengths.sum()) == meta["tokens"]
    first = embedded_corpus.read_documents(embedded_corpus.stdlib_files(1))[0]
    assert ds[0].tolist() == tok.encode(first).ids + [meta["eod"]]
    assert not (tmp_path / "emb.partial").exists()
