"""Analysis of trained models: layer ablation, weight-change signatures, sensitivity sweeps."""
