"""The CTC family: a Whisper-encoder or Conformer encoder with a character CTC head, intermediate CTC exits and
LayerDrop (``network``), its config (``config``), checkpoints (``checkpoint``) and CTC search (``vocab``)."""

from .checkpoint import from_whisper, initial_state, is_ctc_folder, load_ctc, read_config, save_ctc
from .config import CONFIG_FILE, ENGLISH_CHARS, CTCConfig
from .network import CTCModel, CTCOutput, ctc_loss, layerdrop_rates
from .vocab import BLANK, CharVocab, greedy_ctc, prefix_beam_search

__all__ = ["BLANK", "CONFIG_FILE", "ENGLISH_CHARS", "CTCConfig", "CTCModel", "CTCOutput", "ctc_loss", "CharVocab", "from_whisper",
           "greedy_ctc", "initial_state", "is_ctc_folder", "layerdrop_rates", "load_ctc", "prefix_beam_search",
           "read_config", "save_ctc"]
