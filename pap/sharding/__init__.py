"""Where weights live across TP/PP ranks, and moving them."""
