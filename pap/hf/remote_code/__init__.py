"""Files copied next to exported weights for `trust_remote_code=True` loading."""
