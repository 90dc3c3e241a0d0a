"""The Whisper family: Hugging Face ``WhisperForConditionalGeneration``, dense or pruned.

- :mod:`.convert`   CTranslate2 -> Hugging Face conversion (the bundled weights), and the reverse name mapping;
- :mod:`.load`      ``is_whisper_folder``, ``load_whisper``;
- :mod:`.shape`     per-layer shapes (``EncoderDecoderShape``) of a live model or a config;
- :mod:`.flops`     analytic FLOPs of such a shape (encoder window, decoder steps);
- :mod:`.adapter`   ``WhisperAdapter`` (units, surgery, structure) and the pruned layer classes;
- :mod:`.graph`     export-friendly encoder / decoder-prefill / decoder-step graphs over a live model;
- :mod:`.decoding`  ``WhisperVocab``, prompts, greedy and beam search over those graphs;
- :mod:`.backend`   ``TorchWhisper``: the PyTorch decoding backend and teacher labeller;
- :mod:`.lengths`   length buckets: a length-adaptive encoder reads a clip's frames rounded up to a bucket.

Import from the submodules; the names below are re-exported for convenience. ``TorchWhisper`` is imported on first
use: it pulls in torch, which ``convert``, ``load``, ``shape`` and ``adapter`` import only inside functions.
"""

from .adapter import WhisperAdapter
from .load import is_whisper_folder, load_whisper
from .shape import whisper_shape, whisper_shape_from_config

__all__ = ["WhisperAdapter", "is_whisper_folder", "load_whisper", "whisper_shape", "whisper_shape_from_config"]


def __getattr__(name: str):
    if name == "TorchWhisper":
        from .backend import TorchWhisper

        return TorchWhisper
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
