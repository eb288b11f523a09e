"""Serving checks: an export loaded by vLLM and by `transformers` gives pap's own outputs
(`python -m pap.serve_check`, docs/CONVERSION.md "Serving")."""
