"""Tokenization to Megatron indexed datasets (.bin/.idx)."""
