"""Audio reading, manifests, text normalization and the bundled evaluation sets."""

from speechprune.data.audio import SAMPLE_RATE, audio_duration, load_audio
from speechprune.data.datasets import BUNDLED_DATASETS, EVALUATION_ONLY, load_dataset, source_of
from speechprune.data.manifest import Utterance, read_manifest, write_manifest
from speechprune.data.normalize import asterisk_reference, normalize_text

__all__ = [
    "BUNDLED_DATASETS",
    "EVALUATION_ONLY",
    "SAMPLE_RATE",
    "Utterance",
    "asterisk_reference",
    "audio_duration",
    "load_audio",
    "load_dataset",
    "normalize_text",
    "read_manifest",
    "source_of",
    "write_manifest",
]
