"""Describe a Megatron indexed dataset: counts, dtype, document lengths, a decoded sample.

    python -m data_prep.inspect data/fineweb-edu_text_document
    python -m data_prep.inspect data/embedded/stdlib_text_document --doc 12 --chars 2000
    python -m data_prep.inspect data/x_text_document.bin --tokenizer path/to/tokenizer.json

The prefix may be given with or without `.bin`/`.idx`. Counts come from the `.idx` alone
(no megatron import, so it answers at once even for large datasets). The sample is
decoded with `--tokenizer`, or else with the tokenizer named in the dataset's
`.meta.json` sidecar when that file can be found; without one, token ids are shown.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import numpy as np

from pap.errors import PapError, exit_status

from data_prep.index import read_index, read_sidecar, sidecar_path, strip_suffix
from data_prep.report import human_bytes


def describe(prefix: str, tokenizer: Optional[str] = None, doc: Optional[int] = None, chars: int = 600) -> str:
    """The report `inspect` prints, as text."""
    from data_prep import tokenizer_loader

    prefix = strip_suffix(prefix)
    if not os.path.isfile(prefix + ".bin"):
        raise PapError(f"{prefix}.bin: no such file (give the dataset prefix, e.g. data/corpus_text_document)")
    index = read_index(prefix)
    meta = read_sidecar(prefix)
    itemsize = np.dtype(index.dtype).itemsize
    bin_size = os.path.getsize(prefix + ".bin")
    lines = [f"dataset     {prefix}",
             f"files       .bin {human_bytes(bin_size)}, .idx {human_bytes(os.path.getsize(prefix + '.idx'))}",
             f"dtype       {np.dtype(index.dtype).name}",
             f"documents   {index.num_documents:,}" + (f" ({index.num_sequences:,} sequences)"
                                                       if index.num_sequences != index.num_documents else ""),
             f"tokens      {index.num_tokens:,}"]
    if bin_size != index.num_tokens * itemsize:
        lines.append(f"WARNING     .bin holds {bin_size:,} bytes but the index describes "
                     f"{index.num_tokens * itemsize:,}: the files do not belong together")
    lengths = index.document_lengths()
    if len(lengths):
        lines.append(f"doc length  min {int(lengths.min()):,}, mean {lengths.mean():,.1f}, "
                     f"median {int(np.median(lengths)):,}, max {int(lengths.max()):,} tokens")
    if meta:
        fields = [f"{k} {meta[k]}" for k in ("vocab_size", "eod", "tokenizer") if k in meta]
        skipped = meta.get("skipped")
        if skipped:
            fields.append("skipped " + ", ".join(f"{n} {r}" for r, n in skipped.items()))
        lines.append(f"sidecar     {sidecar_path(prefix).name}: " + "; ".join(fields))
    if not index.num_documents:
        return "\n".join(lines)

    spec = None
    if tokenizer:
        spec = tokenizer_loader.resolve(tokenizer)
    elif meta:
        spec = tokenizer_loader.from_sidecar(meta, sidecar_path(prefix).parent)
    if doc is None:
        doc = 0
    if not 0 <= doc < index.num_documents:
        raise PapError(f"--doc {doc}: the dataset has documents 0 to {index.num_documents - 1}")
    ids = index.document_tokens(doc)
    lines.append(f"document {doc} ({len(ids):,} tokens):")
    if spec is None:
        shown: List[int] = ids[:64].tolist()
        lines.append(f"  ids {shown}{' ...' if len(ids) > len(shown) else ''}  (no tokenizer: pass --tokenizer)")
    else:
        text = spec.load().decode(ids.tolist())
        cut = text[:chars]
        lines.append("  " + cut.replace("\n", "\n  ") + (f"\n  ... ({len(text) - len(cut):,} more characters)"
                                                          if len(text) > len(cut) else ""))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.inspect", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefix", help="dataset prefix (data/x_text_document), or its .bin/.idx")
    p.add_argument("--tokenizer", help="decode the sample with this tokenizer (default: the sidecar's)")
    p.add_argument("--doc", type=int, help="which document to show (default 0)")
    p.add_argument("--chars", type=int, default=600, help="characters of the sample to show (default 600)")
    args = p.parse_args(argv)
    return exit_status(lambda: print(describe(args.prefix, args.tokenizer, args.doc, args.chars)))


if __name__ == "__main__":
    sys.exit(main())
