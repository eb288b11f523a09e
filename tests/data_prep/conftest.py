"""Corpora and tokenizers made on the spot (no downloads): stdlib source plus some non-ASCII text."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import List

import numpy as np
import pytest

EOD = "<|endoftext|>"


def _documents() -> List[str]:
    from data_prep.embedded_corpus import read_documents, stdlib_files

    docs = []
    for text in read_documents(stdlib_files(60)):
        docs += [text[i:i + 2500] for i in range(0, len(text), 2500)]
    rng = random.Random(0)
    words = ["naïve", "café", "Zürich", "東京", "данные", "λόγος", "🙂", "é", "ß", "数据"]
    docs += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 80))) for _ in range(40)]
    rng.shuffle(docs)
    return docs


@pytest.fixture(scope="session")
def docs() -> List[str]:
    """About 450 documents, 0.8 MB: Python source, docstrings, and multilingual text."""
    return _documents()


def write_jsonl(path, docs, key: str = "text") -> str:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({key: d, "id": len(d)}) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, docs) -> str:
    """`docs` as one JSON-lines file."""
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", docs)


def train_bpe(docs, vocab_size: int, special_tokens):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


@pytest.fixture(scope="session")
def hf_json(tmp_path_factory, docs) -> str:
    """A byte-level BPE tokenizer.json (vocab 1000, `<|endoftext|>` = 0)."""
    path = tmp_path_factory.mktemp("hf_json") / "tokenizer.json"
    train_bpe(docs, 1000, [EOD]).save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory, docs) -> str:
    """A Hugging Face tokenizer directory whose eos_token (`<|eos|>`, id 2) only its config names."""
    path = tmp_path_factory.mktemp("hf_dir")
    train_bpe(docs, 800, ["<|pad|>", EOD, "<|eos|>"]).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": {"content": "<|eos|>"}}))
    return str(path)


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory, docs) -> str:
    """A SentencePiece BPE model (vocab 600) trained on the corpus lines."""
    import sentencepiece as spm

    path = tmp_path_factory.mktemp("sp")
    lines = [line for d in docs for line in d.splitlines() if line.strip()]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(path / "sp"), vocab_size=600,
                                   model_type="bpe", character_coverage=1.0, byte_fallback=True,
                                   minloglevel=2, num_threads=1)
    return str(path / "sp.model")


@pytest.fixture
def run_tokenize(capsys):
    """Run `python -m data_prep.tokenize ARGS` in this process; returns (exit status, stdout, stderr)."""
    from data_prep import tokenize

    def run(*args):
        rc = tokenize.main([str(a) for a in args])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run


def read_documents(prefix: str) -> List[List[int]]:
    """Every document of a dataset, read with megatron-core's own IndexedDataset."""
    from data_prep.writer import load_megatron

    ds = load_megatron().IndexedDataset(prefix)
    bounds = ds.document_indices
    out = []
    for d in range(len(bounds) - 1):
        parts = [np.asarray(ds[i]) for i in range(bounds[d], bounds[d + 1])]
        out.append(np.concatenate(parts).tolist() if parts else [])
    return out


def output_bytes(prefix: str) -> bytes:
    return Path(prefix + ".bin").read_bytes() + b"|" + Path(prefix + ".idx").read_bytes()
