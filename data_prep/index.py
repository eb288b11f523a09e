"""Read a Megatron indexed dataset's `.idx` without importing megatron.

megatron-core's `IndexedDataset` pulls in torch and most of megatron-core (about 5 s of
imports); `inspect` and `blend` only need the counts, which the index holds in a few
plain arrays. The layout (megatron/core/datasets/indexed_dataset.py, `_IndexWriter`):

    b"MMIDIDX\\x00\\x00"  <Q version (1)  <B dtype code
    <Q sequence count S   <Q document count D
    int32[S] sequence lengths   int64[S] byte offsets into .bin   int64[D] document indices
    int8[S] sequence modes (multimodal datasets only)

`tests/data_prep/test_index.py` checks every figure against megatron's own reader.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pap.errors import PapError

INDEX_HEADER = b"MMIDIDX\x00\x00"
# megatron.core.datasets.indexed_dataset.DType codes
DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
               7: np.float32, 8: np.uint16}
_SUFFIXES = (".bin", ".idx", ".meta.json")


def strip_suffix(path: str) -> str:
    """`data/x_text_document.bin` (or `.idx`, `.meta.json`) -> `data/x_text_document`."""
    for suffix in _SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def sidecar_path(prefix: str) -> Path:
    """The metadata file written next to `{prefix}.bin/.idx` (read by `pap.data`)."""
    return Path(prefix + ".meta.json")


def read_sidecar(prefix: str) -> Optional[dict]:
    """The sidecar of `prefix` as a dict, or None when there is none."""
    path = sidecar_path(prefix)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise PapError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise PapError(f"{path}: expected a JSON object")
    return meta


@dataclass
class IndexInfo:
    """The arrays of one `.idx` file (memory-mapped, so opening a large index is instant)."""

    prefix: str
    dtype: type
    sequence_lengths: np.ndarray  # int32, tokens per sequence
    sequence_pointers: np.ndarray  # int64, byte offset of each sequence in .bin
    document_indices: np.ndarray  # int64, D entries; document i is sequences [d[i], d[i+1])

    @property
    def num_sequences(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        """Documents as megatron counts them (`len(document_indices) - 1`)."""
        return max(len(self.document_indices) - 1, 0)

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))

    def document_lengths(self) -> np.ndarray:
        """Tokens per document (int64)."""
        ends = np.concatenate([[0], np.cumsum(self.sequence_lengths, dtype=np.int64)])
        return ends[self.document_indices[1:]] - ends[self.document_indices[:-1]]

    def document_tokens(self, index: int) -> np.ndarray:
        """Token ids of document `index`, read from `.bin`."""
        first, last = int(self.document_indices[index]), int(self.document_indices[index + 1])
        if first == last:
            return np.zeros(0, dtype=self.dtype)
        offset = int(self.sequence_pointers[first])
        count = int(self.sequence_lengths[first:last].sum(dtype=np.int64))
        return np.fromfile(self.prefix + ".bin", dtype=self.dtype, count=count, offset=offset)


def read_index(prefix: str) -> IndexInfo:
    """Open `{prefix}.idx`; a missing or malformed file is a one-line `PapError`."""
    path = prefix + ".idx"
    if not Path(path).is_file():
        raise PapError(f"{path}: no such index (give the dataset prefix, e.g. data/corpus_text_document)")
    with open(path, "rb") as f:
        head = f.read(len(INDEX_HEADER) + 8 + 1 + 16)
    if len(head) < len(INDEX_HEADER) + 25 or not head.startswith(INDEX_HEADER):
        raise PapError(f"{path}: not a Megatron indexed-dataset index (bad header)")
    pos = len(INDEX_HEADER)
    (version,) = struct.unpack_from("<Q", head, pos)
    (code,) = struct.unpack_from("<B", head, pos + 8)
    sequences, documents = struct.unpack_from("<QQ", head, pos + 9)
    if version != 1 or code not in DTYPE_CODES:
        raise PapError(f"{path}: unsupported index version {version} or dtype code {code}")
    offset = len(head)
    size = Path(path).stat().st_size
    needed = offset + sequences * (4 + 8) + documents * 8
    if size < needed:
        raise PapError(f"{path}: truncated ({size} bytes, the header promises at least {needed})")
    mm = np.memmap(path, mode="r", dtype=np.uint8)
    lengths = mm[offset: offset + 4 * sequences].view(np.int32)
    offset += 4 * sequences
    pointers = mm[offset: offset + 8 * sequences].view(np.int64)
    offset += 8 * sequences
    doc_indices = mm[offset: offset + 8 * documents].view(np.int64)
    return IndexInfo(prefix, DTYPE_CODES[code], lengths, pointers, doc_indices)


def validate_pair(prefix: str) -> IndexInfo:
    """Check that `{prefix}.idx` describes `{prefix}.bin` exactly, in one pass over the index.

    The index must be complete (no truncation, no trailing bytes, multimodal mode bytes
    aside), its byte offsets must be the running sum of its sequence lengths, its document
    boundaries must run from 0 to the sequence count without going back, and `.bin` must
    hold exactly the tokens the index counts at the index's dtype: a `.bin` of another
    dataset, another dtype or a truncated copy fails here, before any training step.
    """
    info = read_index(prefix)
    idx, bin_path = prefix + ".idx", prefix + ".bin"
    if not Path(bin_path).is_file():
        raise PapError(f"{bin_path}: no such file (the data pair is {prefix}.bin/.idx)")
    itemsize = np.dtype(info.dtype).itemsize
    fix = f"re-create the pair with data_prep.tokenize, or restore the {prefix}.bin that belongs to {idx}"
    expected = info.num_tokens * itemsize
    actual = Path(bin_path).stat().st_size
    if actual != expected:
        raise PapError(f"{bin_path}: {actual:,} bytes, but {idx} describes {info.num_tokens:,} tokens of "
                       f"{np.dtype(info.dtype).name} ({expected:,} bytes); {fix}")
    needed = len(INDEX_HEADER) + 25 + info.num_sequences * 12 + len(info.document_indices) * 8
    size = Path(idx).stat().st_size
    if size not in (needed, needed + info.num_sequences):  # (+ one mode byte per sequence: multimodal)
        raise PapError(f"{idx}: {size:,} bytes where its header promises {needed:,}; {fix}")
    if info.num_sequences:
        starts = np.zeros(info.num_sequences, dtype=np.int64)
        np.cumsum(info.sequence_lengths[:-1], dtype=np.int64, out=starts[1:])
        if (info.sequence_lengths < 0).any() or not np.array_equal(starts * itemsize, info.sequence_pointers):
            raise PapError(f"{idx}: sequence offsets do not follow the sequence lengths (a damaged index); {fix}")
    docs = info.document_indices
    if len(docs) and (docs[0] != 0 or docs[-1] != info.num_sequences or (np.diff(docs) < 0).any()):
        raise PapError(f"{idx}: document boundaries do not cover sequences 0..{info.num_sequences} in order "
                       f"(a damaged index); {fix}")
    return info
