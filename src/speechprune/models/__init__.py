"""Model adapters and the bundled models.

- :mod:`speechprune.models.ct2`      a pure reader of CTranslate2 ``model.bin`` files;
- :mod:`speechprune.models.registry` bundled models by name, checked and converted into the cache;
- :mod:`speechprune.models.whisper`  the Whisper family (conversion, loading, shapes and FLOPs, adapter, graphs,
                                     decoding, the PyTorch backend), by concern: the only code that knows Whisper's
                                     module names;
- :mod:`speechprune.models.ctc`      the CTC family;
- :mod:`speechprune.models.decoding` what every family's decoding backend shares (options, results, digest).

Import from the submodules; this package imports nothing heavy.
"""
