"""Analyses of a model: what each part costs when pruned (sensitivity sweeps, sparsity plans)."""
