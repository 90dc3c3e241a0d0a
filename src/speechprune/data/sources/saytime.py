"""saytime's talking clock (Debian ``saytime``): one speaker (David C. Dawson) saying numbers and clock words.

Clips: ``/usr/share/saytime/<stem>.au``, headerless G.711 mu-law at 8 kHz (saytime plays them with
``sox -t .ul``). libsndfile opens them as raw mu-law but reads 12 frames fewer than it counts, which
:func:`~speechprune.data.audio.load_audio` rightly reports as truncated, so they are decoded here
(:func:`decode_ulaw`) and converted once into the cache. The stem is the text, with ``_`` as a space and
:data:`STEM_TEXTS` for stems that are not spelled as said (``oclock``). Id: the stem.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from speechprune.data.manifest import Utterance
from speechprune.data.sources.common import converted_wav, fingerprint, require, source_cache
from speechprune.errors import ConfigError

NAME = "saytime"
SOUNDS_DIR = Path("/usr/share/saytime")
PACKAGE = "saytime"
ULAW_RATE = 8000

# stem -> what is said, where the stem is not that text with "_" as spaces
STEM_TEXTS = {"oclock": "o'clock"}
# utterance id -> why it is left out
DROPPED: dict[str, str] = {}


def decode_ulaw(data: bytes) -> np.ndarray:
    """Headerless G.711 mu-law bytes as float32 samples in [-1, 1) (the ITU-T table, as libsndfile decodes it).
    ValueError for no bytes."""
    if not data:
        raise ValueError("no mu-law samples")
    u = (~np.frombuffer(data, dtype=np.uint8)).astype(np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return (np.where(u & 0x80, -magnitude, magnitude) / 32768.0).astype(np.float32)


def text_for(stem: str) -> str:
    """What a clip stem says (``the_time_is`` -> "the time is")."""
    return STEM_TEXTS.get(stem, stem.replace("_", " "))


def read_saytime(sounds_dir: Path = SOUNDS_DIR) -> list[Utterance]:
    """Every clip, sorted by id; audio converted once into the cache."""
    require(sounds_dir, PACKAGE, "saytime sounds folder", want_dir=True)
    return list(_read(sounds_dir.resolve(), source_cache(NAME)))


@lru_cache(maxsize=4)
def _read(sounds_dir: Path, cache: Path) -> tuple[Utterance, ...]:
    out = []
    for clip in sorted(sounds_dir.glob("*.au")):
        if clip.stem in DROPPED:
            continue
        data = clip.read_bytes()
        try:
            wav, duration = converted_wav(cache, clip.stem, fingerprint(data), lambda: (decode_ulaw(data), ULAW_RATE))
        except ValueError as exc:
            raise ConfigError(str(exc), clip) from None
        out.append(Utterance(id=clip.stem, audio=wav, text=text_for(clip.stem), language="en", task="transcribe",
                             duration=duration))
    return tuple(out)
