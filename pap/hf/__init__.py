"""Hugging Face <-> megatron-core conversion (Llama family)."""
