"""Hugging Face <-> megatron-core conversion.

The Hugging Face classes it writes and reads are export families (`pap.hf.families`).
"""
