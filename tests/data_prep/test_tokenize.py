"""data_prep.tokenize: round trips through megatron-core's reader, tokenizer kinds, input formats."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np

from tests.data_prep.conftest import output_bytes, read_documents, write_jsonl


def _sidecar(prefix):
    with open(prefix + ".meta.json") as f:
        return json.load(f)


def test_round_trip_hf_tokenizer_json(tmp_path, corpus, docs, hf_json, run_tokenize):
    from tokenizers import Tokenizer

    prefix = tmp_path / "out"
    rc, out, err = run_tokenize("--input", corpus, "--output-prefix", prefix, "--tokenizer", hf_json,
                                "--append-eod", "--workers", 2, "--shard-bytes", "100K")
    assert rc == 0, err
    tok = Tokenizer.from_file(hf_json)
    eod = tok.token_to_id("<|endoftext|>")
    expected = [tok.encode(d, add_special_tokens=False).ids + [eod] for d in docs]
    dataset = f"{prefix}_text_document"
    assert read_documents(dataset) == expected
    meta = _sidecar(dataset)
    assert meta["vocab_size"] == 1000 and meta["eod"] == eod == 0
    assert meta["documents"] == len(docs) and meta["tokens"] == sum(map(len, expected))
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == os.path.abspath(hf_json)
    assert np.fromfile(dataset + ".bin", dtype=np.uint16).size == meta["tokens"]
    assert f"{len(docs):,} docs, {meta['tokens']:,} tokens" in out
    assert "tokens/s" in out and not os.path.exists(f"{prefix}.partial")
    assert "word-cache byte-level encoder" in err and f"encoder  word cache; 0 of the {len(docs):,} documents" in out


def test_library_encoder_writes_the_same_bytes(tmp_path, corpus, hf_json, run_tokenize):
    outputs = []
    for encoder in ("auto", "library"):
        prefix = tmp_path / encoder
        rc, out, err = run_tokenize("--input", corpus, "--output-prefix", prefix, "--tokenizer", hf_json,
                                    "--append-eod", "--workers", 1, "--encoder", encoder)
        assert rc == 0, err
        outputs.append(output_bytes(f"{prefix}_text_document"))
    assert outputs[0] == outputs[1]
    assert "library encoder" in err and "encoder  word cache" not in out


def test_round_trip_hf_directory_uses_configured_eos(tmp_path, corpus, docs, hf_dir, run_tokenize):
    from tokenizers import Tokenizer

    prefix = tmp_path / "out"
    rc, _, err = run_tokenize("--input", corpus, "--output-prefix", prefix, "--tokenizer", hf_dir,
                              "--append-eod", "--workers", 1)
    assert rc == 0, err
    tok = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    eod = tok.token_to_id("<|eos|>")
    assert eod == 2
    assert read_documents(f"{prefix}_text_document") == [tok.encode(d, add_special_tokens=False).ids + [eod]
                                                         for d in docs]
    assert _sidecar(f"{prefix}_text_document")["eod"] == 2


def test_round_trip_sentencepiece(tmp_path, docs, sp_model, run_tokenize):
    import sentencepiece as spm

    # Whitespace-only texts give SentencePiece no tokens: skipped as empty documents.
    corpus = write_jsonl(tmp_path / "c.jsonl", docs[:100] + ["   ", "\n\n"] + docs[100:])
    prefix = tmp_path / "out"
    rc, out, err = run_tokenize("--input", corpus, "--output-prefix", prefix, "--tokenizer", sp_model,
                                "--append-eod", "--workers", 2, "--tokenizer-type", "SentencePieceTokenizer")
    assert rc == 0, err
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    expected = [sp.encode(d, out_type=int) + [sp.eos_id()] for d in docs]
    assert read_documents(f"{prefix}_text_document") == expected
    meta = _sidecar(f"{prefix}_text_document")
    assert (meta["vocab_size"], meta["eod"], meta["tokenizer_type"]) == (600, sp.eos_id(), "sentencepiece")
    assert meta["skipped"] == {"empty": 2} and f"{corpus}:101: empty: 'text' gives no tokens" in out


def test_without_append_eod_documents_are_bare(tmp_path, corpus, docs, hf_json, run_tokenize):
    from tokenizers import Tokenizer

    prefix = tmp_path / "out"
    rc, _, err = run_tokenize("--input", corpus, "--output-prefix", prefix, "--tokenizer", hf_json)
    assert rc == 0, err
    tok = Tokenizer.from_file(hf_json)
    assert read_documents(f"{prefix}_text_document") == [tok.encode(d).ids for d in docs]
    assert _sidecar(f"{prefix}_text_document")["eod"] is None


def test_worker_count_and_shard_size_do_not_change_bytes(tmp_path, corpus, hf_json, run_tokenize):
    outputs = []
    for workers, shard in ((1, "128M"), (2, "64K"), (2, "7K")):
        prefix = tmp_path / f"w{workers}_{shard}"
        rc, _, err = run_tokenize("--input", corpus, "--output-prefix", prefix, "--tokenizer", hf_json,
                                  "--append-eod", "--workers", workers, "--shard-bytes", shard)
        assert rc == 0, err
        outputs.append(output_bytes(f"{prefix}_text_document"))
    assert outputs[0] == outputs[1] == outputs[2]


def test_compressed_and_parquet_inputs_give_the_same_bytes(tmp_path, corpus, docs, hf_json, run_tokenize):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    raw = open(corpus, "rb").read()
    half = len(docs) // 2
    gz, zst, parquet = tmp_path / "a.jsonl.gz", tmp_path / "a.jsonl.zst", tmp_path / "a.parquet"
    gz.write_bytes(gzip.compress(raw))
    zst.write_bytes(zstandard.ZstdCompressor().compress(raw))
    # Several row groups, one of them with a null to skip and a binary-free string column.
    pq.write_table(pa.table({"text": docs[:half] + [None] + docs[half:]}), parquet, row_group_size=100)
    assert pq.ParquetFile(parquet).metadata.num_row_groups > 2
    results = {}
    for name, path in (("jsonl", corpus), ("gz", gz), ("zst", zst), ("parquet", parquet)):
        prefix = tmp_path / name
        rc, out, err = run_tokenize("--input", path, "--output-prefix", prefix, "--tokenizer", hf_json,
                                    "--append-eod", "--workers", 2)
        assert rc == 0, err
        results[name] = output_bytes(f"{prefix}_text_document")
    assert results["jsonl"] == results["gz"] == results["zst"] == results["parquet"]
    assert f"{parquet}:row {half}: missing_key" in out


def test_several_files_globs_and_json_keys(tmp_path, docs, hf_json, run_tokenize):
    from tokenizers import Tokenizer

    (tmp_path / "in").mkdir()
    for i in range(3):
        with open(tmp_path / "in" / f"part{i}.jsonl", "w") as f:
            for d in docs[i::3]:
                f.write(json.dumps({"text": d, "title": d[:20]}) + "\n")
    prefix = tmp_path / "out"
    rc, _, err = run_tokenize("--input", str(tmp_path / "in" / "part*.jsonl"), "--output-prefix", prefix,
                              "--tokenizer", hf_json, "--json-keys", "text", "title", "--workers", 2)
    assert rc == 0, err
    tok = Tokenizer.from_file(hf_json)
    ordered = docs[0::3] + docs[1::3] + docs[2::3]  # glob matches sorted, files in that order
    assert read_documents(f"{prefix}_text_document") == [tok.encode(d).ids for d in ordered]
    assert read_documents(f"{prefix}_title_document") == [tok.encode(d[:20]).ids for d in ordered]
    assert _sidecar(f"{prefix}_title_document")["json_key"] == "title"


def test_large_vocab_is_int32_and_uint16_refused(tmp_path, run_tokenize):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "<|endoftext|>": 1, **{f"w{i}": i + 2 for i in range(70000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "big.json"))
    corpus = write_jsonl(tmp_path / "c.jsonl", ["w1 w69999 w5", "w65535 w65536 zzz"])
    prefix = tmp_path / "out"
    rc, _, err = run_tokenize("--input", corpus, "--output-prefix", prefix, "--tokenizer", tmp_path / "big.json",
                              "--append-eod", "--dtype", "uint16")
    assert rc == 2 and err.startswith("error: --dtype uint16") and err.count("\n") == 1
    assert not os.path.exists(f"{prefix}.partial")
    rc, _, err = run_tokenize("--input", corpus, "--output-prefix", prefix, "--tokenizer", tmp_path / "big.json",
                              "--append-eod")
    assert rc == 0, err
    assert read_documents(f"{prefix}_text_document") == [[3, 70001, 7, 1], [65537, 65538, 0, 1]]
    assert _sidecar(f"{prefix}_text_document")["dtype"] == "int32"


def test_rerun_after_success_is_up_to_date_and_changes_need_overwrite(tmp_path, corpus, hf_json, run_tokenize):
    prefix = tmp_path / "out"
    args = ["--input", corpus, "--output-prefix", prefix, "--tokenizer", hf_json, "--append-eod"]
    assert run_tokenize(*args)[0] == 0
    before = output_bytes(f"{prefix}_text_document")
    rc, out, _ = run_tokenize(*args)
    assert rc == 0 and "up to date" in out
    rc, _, err = run_tokenize(*args[:-1])  # without --append-eod
    assert rc == 2 and "--overwrite" in err
    assert output_bytes(f"{prefix}_text_document") == before
    rc, _, err = run_tokenize(*args[:-1], "--overwrite")
    assert rc == 0, err
    assert len(output_bytes(f"{prefix}_text_document")) < len(before)
