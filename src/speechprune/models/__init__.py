"""Model adapters and the bundled models.

- :mod:`speechprune.models.ct2`      a pure reader of CTranslate2 ``model.bin`` files;
- :mod:`speechprune.models.registry` bundled models by name, checked and converted into the cache;
- :mod:`speechprune.models.whisper`  the Whisper adapter (the only module that knows Whisper's module names).

Import from the submodules; this package imports nothing heavy.
"""
