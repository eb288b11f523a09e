"""Write Megatron indexed datasets, byte for byte as megatron-core's `IndexedDatasetBuilder` does.

Everything data_prep writes goes through here: one document at a time into a shard
(`ShardWriter`), shards concatenated in order (`merge`), whole small corpora in one call
(`write_documents`), and the JSON sidecar (`write_json_atomic`). None of it imports
megatron-core (seconds of torch imports); tests/data_prep/test_writer.py checks the bytes
against megatron-core's builder.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from array import array
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np

from pap.errors import PapError

from data_prep.index import DTYPE_CODES, INDEX_HEADER, read_index

# megatron.core.datasets.indexed_dataset.DType.optimal_dtype: uint16 below this vocabulary size.
UINT16_VOCAB_LIMIT = 65500
DTYPES = {"uint16": np.uint16, "int32": np.int32}


def token_dtype(vocab_size: int, requested: str = "auto") -> type:
    """Token dtype for a vocabulary: Megatron's rule for "auto", else the one asked for if it fits."""
    if requested == "auto":
        return np.uint16 if vocab_size < UINT16_VOCAB_LIMIT else np.int32
    if requested not in DTYPES:
        raise PapError(f"--dtype {requested!r}: choose auto, uint16 or int32")
    dtype = DTYPES[requested]
    if vocab_size - 1 > np.iinfo(dtype).max:
        raise PapError(f"--dtype {requested}: the tokenizer's vocabulary ({vocab_size:,} ids) does not fit "
                       f"in {requested} (largest {np.iinfo(dtype).max:,}); use --dtype int32 or auto")
    return dtype


def dtype_name(dtype) -> str:
    """`np.uint16` -> "uint16"."""
    return np.dtype(dtype).name


def load_megatron():
    """Import megatron-core's indexed dataset module (seconds: it imports most of megatron-core).

    Only the tests and `pap.data` read datasets through it; writing needs none of it. The
    import warns that Transformer Engine and Apex are missing, which is irrelevant here.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


_ARRAY_CODES = {np.dtype(np.uint16): "H", np.dtype(np.int32): "i"}
_FLUSH_TOKENS = 1 << 22  # tokens buffered before a write to .bin


def _index_header(dtype, sequences: int, documents: int) -> bytes:
    """Start of a `.idx` (megatron/core/datasets/indexed_dataset.py, `_IndexWriter.write`)."""
    code = {np.dtype(v): k for k, v in DTYPE_CODES.items()}[np.dtype(dtype)]
    return INDEX_HEADER + struct.pack("<Q", 1) + struct.pack("<B", code) + struct.pack("<QQ", sequences, documents)


class ShardWriter:
    """Documents into `{prefix}.bin/.idx`, one sequence per document (as preprocess_data.py).

    The bytes are those of megatron-core's `IndexedDatasetBuilder` (`add_document` per
    document, then `finalize`; tests/data_prep/test_writer.py compares them), written
    without importing megatron-core (seconds of torch imports per run) and with the
    tokens buffered in a typed array rather than written document by document.

    Files are written under `{prefix}.{tag}.tmp.*` and renamed to their final names by
    `close()`, so a reader never sees a half-written shard, and two processes writing the
    same shard (a run and a leftover worker of a killed one) cannot interleave bytes.
    """

    def __init__(self, prefix: str, dtype, tag: str = ""):
        if np.dtype(dtype) not in _ARRAY_CODES:
            raise PapError(f"token dtype {np.dtype(dtype).name}: data_prep writes uint16 or int32")
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        self._tmp = f"{prefix}.{tag or os.getpid()}.tmp"
        self._bin = open(self._tmp + ".bin", "wb")
        self._tokens = array(_ARRAY_CODES[self.dtype])
        self._lengths = array("i")
        self.documents = 0
        self.tokens = 0

    def add(self, ids: Sequence[int]) -> None:
        """Append one non-empty document (token ids, end-of-document token included)."""
        self._tokens.extend(ids)
        self._lengths.append(len(ids))
        self.documents += 1
        self.tokens += len(ids)
        if len(self._tokens) >= _FLUSH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        self._tokens.tofile(self._bin)
        del self._tokens[:]

    def close(self) -> None:
        """Write the index and move both files to their final names."""
        self._flush()
        self._bin.close()
        lengths = np.frombuffer(self._lengths, dtype=np.int32) if self._lengths else np.zeros(0, np.int32)
        sizes = lengths.astype(np.int64) * self.dtype.itemsize
        with open(self._tmp + ".idx", "wb") as idx:
            idx.write(_index_header(self.dtype, len(lengths), len(lengths) + 1))
            idx.write(lengths.tobytes())
            idx.write((np.cumsum(sizes) - sizes).tobytes())  # byte offset of each sequence in .bin
            idx.write(np.arange(len(lengths) + 1, dtype=np.int64).tobytes())  # one sequence per document
        os.replace(self._tmp + ".bin", self.prefix + ".bin")
        os.replace(self._tmp + ".idx", self.prefix + ".idx")

    def abort(self) -> None:
        """Drop the temporary files (after an error)."""
        self._bin.close()
        for suffix in (".bin", ".idx"):
            try:
                os.remove(self._tmp + suffix)
            except FileNotFoundError:
                pass


def merge(shard_prefixes: Iterable[str], out_prefix: str, dtype) -> None:
    """Concatenate datasets, in the order given, into `{out_prefix}.bin/.idx`.

    Writes exactly the bytes of megatron-core's `IndexedDatasetBuilder.add_index` followed
    by `finalize` (tests/data_prep/test_writer.py compares them), but streams the index
    shard by shard with numpy: `add_index` runs `gc.collect()` per shard (0.2 s each once
    torch is imported) and holds every sequence length as a Python object.
    """
    itemsize = np.dtype(dtype).itemsize
    indices = [read_index(p) for p in shard_prefixes]
    for index in indices:
        if np.dtype(index.dtype) != np.dtype(dtype):
            raise PapError(f"{index.prefix}.idx: dtype {np.dtype(index.dtype).name}, expected {dtype_name(dtype)}")
    with open(out_prefix + ".bin", "wb") as out:
        for index in indices:
            with open(index.prefix + ".bin", "rb") as f:
                shutil.copyfileobj(f, out, 1 << 24)
    sequences = sum(i.num_sequences for i in indices)
    documents = 1 + sum(i.num_documents for i in indices)
    with open(out_prefix + ".idx", "wb") as out:
        out.write(_index_header(dtype, sequences, documents))
        for index in indices:
            out.write(np.asarray(index.sequence_lengths, dtype=np.int32).tobytes())
        offset = 0  # byte offset of the next sequence in .bin
        for index in indices:
            sizes = np.asarray(index.sequence_lengths, dtype=np.int64) * itemsize
            starts = np.cumsum(sizes) - sizes + offset
            out.write(starts.astype(np.int64).tobytes())
            offset += int(sizes.sum())
        out.write(np.zeros(1, dtype=np.int64).tobytes())
        first = 0  # index of the shard's first sequence in the merged dataset
        for index in indices:
            out.write((np.asarray(index.document_indices[1:], dtype=np.int64) + first).tobytes())
            first += index.num_sequences


def write_documents(prefix: str, documents: Iterable[List[int]], dtype, eod: Optional[int] = None) -> int:
    """Write whole documents (each followed by `eod` when given) to `prefix`; returns tokens."""
    writer = ShardWriter(prefix, dtype, tag="write")
    try:
        for ids in documents:
            writer.add(list(ids) + ([eod] if eod is not None else []))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.tokens


def write_json_atomic(path, obj) -> None:
    """Write JSON to `path` through a temporary file and a rename: old or new, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
