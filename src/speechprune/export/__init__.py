"""Exporters of dense and pruned models to inference runtimes: ``onnx`` (ONNX Runtime graphs), ``ct2``
(CTranslate2), ``hf`` (stock Hugging Face folders).

Import from the submodules; this package imports nothing heavy.
"""
