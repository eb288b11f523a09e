"""Evaluating pap models: benchmark accuracy through lm-evaluation-harness, and
validation loss on Megatron data at any TP/PP (`python -m pap.eval --help`).

The harness path imports lm-eval only when it runs, so nothing else in pap pays for it.
"""
