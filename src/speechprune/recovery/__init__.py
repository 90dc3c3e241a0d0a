"""Recovery after pruning: distillation fine-tuning from the dense model."""
