"""Small learnable token datasets made on the spot, for tests and self-checks that need no corpus.

Each document is an arithmetic sequence (random start and stride) modulo the vocabulary,
followed by token 0 as end of document, so a model learns it within a few steps and a
falling loss is visible at once.
"""

from __future__ import annotations

import numpy as np


def write_arithmetic_dataset(prefix: str, num_docs: int = 300, vocab: int = 256, seed: int = 0,
                             lengths: tuple = (10, 120)) -> str:
    """Write `{prefix}.bin/.idx` (megatron-core's format; uint16 tokens below 65,500 ids) and return `prefix`."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16 if vocab < 65500 else np.int32)
    for _ in range(num_docs):
        length, start, stride = int(rng.integers(*lengths)), int(rng.integers(vocab)), int(rng.integers(1, 4))
        doc = (start + stride * np.arange(length)) % (vocab - 1) + 1
        builder.add_item(torch.tensor(np.append(doc, 0), dtype=torch.int64))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    return prefix
