"""Analyses of a model: layer ablation, weight-change signatures, sensitivity sweeps and sparsity plans."""
