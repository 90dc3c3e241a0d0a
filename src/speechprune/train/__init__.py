"""Training models from scratch or from a pretrained encoder (``speechprune train``): recipes and loops."""
