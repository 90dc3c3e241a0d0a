"""The wav2vec2 family: Hugging Face ``Wav2Vec2ForCTC`` folders (a ``Wav2Vec2CTCTokenizer`` and a waveform
``preprocessor_config.json`` beside them). One module per concern: ``adapter`` (units and surgery: the only module
that knows the model's module names for pruning), ``load`` (folders, tokenizer, front end), ``forward`` (the one
forward every stage runs), ``vocab`` (the tokenizer as a CTC vocabulary), ``flops``, ``backend`` (decoding),
``batches`` (teacher labels), ``scoring`` (the reference scorer) and ``family`` (``FAMILY``, the seam)."""

from .adapter import Wav2Vec2Adapter
from .load import is_wav2vec2_folder, load_wav2vec2

__all__ = ["Wav2Vec2Adapter", "is_wav2vec2_folder", "load_wav2vec2"]
