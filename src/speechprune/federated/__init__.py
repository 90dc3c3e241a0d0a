"""Federated fine-tuning (issue 21): clients train physically smaller sub-models of the global model (federated
dropout aimed at chosen layers, :mod:`.dropout`) and their updates are scattered back and averaged."""
