"""Tokenization to Megatron indexed datasets (.bin/.idx), blends, and the embedded demo corpus.

Entry points (each module's docstring shows its command):
    python -m data_prep.tokenize          JSON lines / Parquet -> {prefix}_{key}_document.bin/.idx/.meta.json
    python -m data_prep.blend             token shares -> Megatron blend, epochs per dataset
    python -m data_prep.inspect PREFIX    counts, dtype, document lengths, a decoded sample
    python -m data_prep.embedded_corpus   the Python standard library as a demo corpus

Pieces of `tokenize`: tokenizer_loader (find and check the tokenizer), shards (inputs ->
ordered shards), readers (records of a shard), worker (one shard -> its .bin/.idx),
writer (megatron-core's builder, merging, sidecars), index (read an .idx without megatron).
"""
