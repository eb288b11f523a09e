"""Knowledge distillation from a frozen teacher during pruning-aware pretraining (docs/DISTILL.md)."""
