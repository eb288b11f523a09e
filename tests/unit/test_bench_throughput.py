"""bench/throughput.py's arithmetic: FLOPs at pruned shapes, interleaving, when a ratio is stated."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("throughput", Path(__file__).resolve().parents[2] / "bench/throughput.py")
throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(throughput)


def test_flops_count_attention_at_heads_times_head_dim():
    """A pruned hidden width leaves heads x head_dim alone: attention FLOPs follow the heads."""
    h, f, heads, d, layers, vocab, seq = 511, 2047, 8, 64, 4, 4096, 256
    shape = {"hidden": h, "ffn": f, "heads": heads, "head_dim": d, "layers": layers, "vocab": vocab, "seq": seq}
    width = heads * d  # 512, not 511
    per_layer = 2 * (3 * width * h + width * h + 3 * f * h) + 2 * 2 * width * seq
    assert throughput.flops_per_token(shape) == 3 * (2 * vocab * h + layers * per_layer)
    dense = {**shape, "hidden": 512, "ffn": 2048, "head_dim": None}
    assert throughput.flops_per_token(dense) == 6 * (layers * (4 * 512 ** 2 + 3 * 512 * 2048) + vocab * 512) \
        + 12 * layers * 512 * seq


def test_pairs_alternate_their_order():
    assert [throughput.pair_order(i, "a", "b") for i in range(4)] == [("a", "b"), ("b", "a")] * 2


def test_ratio_stated_only_when_every_pair_agrees():
    assert "same side of 1" in throughput.ratio_line("x", [1.02, 1.05, 1.01])
    assert "do not resolve" in throughput.ratio_line("x", [1.02, 0.98, 1.10])
