"""Make the embedded demo corpus: the Python standard library's source, tokenized.

    python -m data_prep.embedded_corpus --output data/embedded

Every machine that runs pap has this text on disk, so the demo and the tests need no
download. Files are taken in sorted order (test suites and site-packages left out), a
byte-level BPE tokenizer is trained on them with the `tokenizers` library, and each file
becomes one document followed by the end-of-document token. Writes, atomically:

    <output>/tokenizer.json
    <output>/stdlib_text_document.{bin,idx}    Megatron indexed dataset (uint16)
    <output>/stdlib_text_document.meta.json    vocab size, counts, Python version

The same Python version gives the same bytes; record it with any figure measured on it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path
from typing import List

from data_prep.writer import dtype_name, token_dtype, write_documents, write_json_atomic

EOD_TOKEN = "<|endoftext|>"
PREFIX_NAME = "stdlib_text_document"
_SKIP_DIRS = {"test", "tests", "site-packages", "dist-packages", "idle_test", "__pycache__"}


def stdlib_files(max_files: int = 0) -> List[Path]:
    """Sorted `.py` files of this interpreter's standard library, without test suites."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts[:-1])
        if parts & _SKIP_DIRS or path.name.startswith("test_"):
            continue
        files.append(path)
    return files[:max_files] if max_files else files


def read_documents(files: List[Path]) -> List[str]:
    docs = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace").strip()
        if text:
            docs.append(text)
    return docs


def train_tokenizer(docs: List[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style) with the end-of-document token at id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOD_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tokenizer


def write_indexed(prefix: str, documents: List[List[int]], eod: int, vocab_size: int = 0) -> int:
    """Write documents (+EOD each) as a megatron-core indexed dataset; returns tokens."""
    return write_documents(prefix, documents, token_dtype(vocab_size), eod=eod)


def make(output: str, vocab_size: int = 4096, max_files: int = 0) -> Path:
    """Build the corpus under `output` (replacing it whole); returns the dataset prefix."""
    start = time.time()
    out = Path(output)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = stdlib_files(max_files)
    docs = read_documents(files)
    print(f"embedded corpus: {len(docs)} files, {sum(map(len, docs)) / 1e6:.1f} MB of Python "
          f"{sys.version.split()[0]} stdlib source", flush=True)
    tokenizer = train_tokenizer(docs, vocab_size)
    tokenizer.save(str(staging / "tokenizer.json"))
    eod = tokenizer.token_to_id(EOD_TOKEN)
    encoded = [e.ids for e in tokenizer.encode_batch(docs)]
    vocab = tokenizer.get_vocab_size()
    tokens = write_indexed(str(staging / PREFIX_NAME), encoded, eod, vocab)
    meta = {"vocab_size": vocab, "eod": eod, "documents": len(docs), "tokens": tokens,
            "dtype": dtype_name(token_dtype(vocab)), "tokenizer": "tokenizer.json",
            "source": f"python {sys.version.split()[0]} stdlib"}
    write_json_atomic(staging / f"{PREFIX_NAME}.meta.json", meta)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    print(f"embedded corpus: {tokens:,} tokens, vocab {meta['vocab_size']}, written to {out} "
          f"in {time.time() - start:.1f}s", flush=True)
    return out / PREFIX_NAME


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="data/embedded", help="output directory")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--max-files", type=int, default=0, help="use only the first N files (0: all)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output exists")
    args = parser.parse_args(argv)
    if not args.force and (Path(args.output) / f"{PREFIX_NAME}.meta.json").is_file():
        print(f"embedded corpus: {args.output} exists (use --force to rebuild)")
        return 0
    make(args.output, args.vocab_size, args.max_files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
