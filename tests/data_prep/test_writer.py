"""The writer and index reader agree with megatron-core's IndexedDatasetBuilder and IndexedDataset."""

from __future__ import annotations

import numpy as np
import pytest

from pap.errors import PapError

from data_prep.index import read_index
from data_prep.writer import merge, token_dtype, write_documents
from tests.data_prep.conftest import output_bytes


def _shards(tmp_path, dtype):
    rng = np.random.default_rng(0)
    high = np.iinfo(dtype).max if dtype == np.uint16 else 100_000
    shards = []
    for s, count in enumerate([5, 0, 1, 17, 3]):  # an empty shard among them
        docs = [rng.integers(0, high, size=rng.integers(1, 50)).tolist() for _ in range(count)]
        prefix = str(tmp_path / f"shard{s}")
        write_documents(prefix, docs, dtype)
        shards.append((prefix, docs))
    return shards


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_shard_writer_matches_megatron_add_document(tmp_path, dtype, monkeypatch):
    from data_prep import writer

    monkeypatch.setattr(writer, "_FLUSH_TOKENS", 7)  # several buffer flushes per shard
    for s, (prefix, docs) in enumerate(_shards(tmp_path, dtype)):
        builder = writer.load_megatron().IndexedDatasetBuilder(str(tmp_path / f"theirs{s}.bin"), dtype=dtype)
        for doc in docs:
            builder.add_document(doc, [len(doc)])
        builder.finalize(str(tmp_path / f"theirs{s}.idx"))
        assert output_bytes(prefix) == output_bytes(str(tmp_path / f"theirs{s}"))


def test_shard_writer_refuses_a_token_that_does_not_fit(tmp_path):
    from data_prep.writer import ShardWriter

    w = ShardWriter(str(tmp_path / "x"), np.uint16)
    with pytest.raises(OverflowError):
        w.add([1, 70000])
    w.abort()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_merge_matches_megatron_add_index(tmp_path, dtype):
    from data_prep.writer import load_megatron

    shards = _shards(tmp_path, dtype)
    merge([p for p, _ in shards], str(tmp_path / "ours"), dtype)
    builder = load_megatron().IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=dtype)
    for prefix, _ in shards:
        builder.add_index(prefix)
    builder.finalize(str(tmp_path / "theirs.idx"))
    assert output_bytes(str(tmp_path / "ours")) == output_bytes(str(tmp_path / "theirs"))


def test_index_reader_matches_megatron(tmp_path):
    from data_prep.writer import load_megatron

    shards = _shards(tmp_path, np.uint16)
    merge([p for p, _ in shards], str(tmp_path / "all"), np.uint16)
    docs = [d for _, ds in shards for d in ds]
    ours = read_index(str(tmp_path / "all"))
    theirs = load_megatron().IndexedDataset(str(tmp_path / "all"))
    assert ours.dtype == theirs.index.dtype == np.uint16
    np.testing.assert_array_equal(ours.sequence_lengths, theirs.sequence_lengths)
    np.testing.assert_array_equal(ours.document_indices, theirs.document_indices)
    assert ours.num_documents == len(docs) and ours.num_tokens == sum(map(len, docs))
    assert ours.document_lengths().tolist() == [len(d) for d in docs]
    assert [ours.document_tokens(i).tolist() for i in range(len(docs))] == docs


def test_token_dtype_rules():
    assert token_dtype(65499) == np.uint16 and token_dtype(65500) == np.int32  # Megatron's optimal_dtype
    assert token_dtype(65536, "uint16") == np.uint16
    with pytest.raises(PapError, match="does not fit in uint16"):
        token_dtype(65537, "uint16")


def test_read_index_errors(tmp_path):
    with pytest.raises(PapError, match="no such index"):
        read_index(str(tmp_path / "missing"))
    (tmp_path / "bad.idx").write_bytes(b"not an index at all, not at all")
    with pytest.raises(PapError, match="bad header"):
        read_index(str(tmp_path / "bad"))


def test_auto_shard_size_depends_on_input_size_only(tmp_path):
    from data_prep.shards import auto_shard_bytes, plan_shards

    small, large, packed = tmp_path / "small.jsonl", tmp_path / "large.jsonl", tmp_path / "x.jsonl.gz"
    for path, size in ((small, 10_000), (large, 3 << 30), (packed, 1 << 30)):
        with open(path, "wb") as f:  # sparse files: nothing is read
            f.truncate(size)
    assert auto_shard_bytes([str(small)]) == 1 << 20
    assert auto_shard_bytes([str(small), str(packed)]) == 1 << 20  # compressed files are one shard anyway
    assert auto_shard_bytes([str(large)]) == (3 << 30) // 1000
    shards = plan_shards([str(large)], auto_shard_bytes([str(large)]), ["text"])
    assert len(shards) == 1001 and shards[-1].end == 3 << 30
    assert all(a.end == b.start for a, b in zip(shards, shards[1:]))
