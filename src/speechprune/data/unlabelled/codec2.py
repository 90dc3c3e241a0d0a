"""Codec 2 test recordings (Debian ``codec2-examples``): read sentences and amateur-radio calls, 8 kHz.

Audio: ``/usr/share/codec2/raw/<name>.raw``, headerless signed 16-bit little-endian mono at 8 kHz (the codec's
own convention), and ``/usr/share/codec2/wav/<name>.wav``. Many files there are not speech or repeat another:
modem waveforms (``test_datac1_006``, ``testframes_700d``, ``700d_end_over``, and ``wav/david4``,
``wav/vk2tpm_004``: steady band-limited noise), test tones (``sine1k_*``), coded copies (``f2400``, ``m2400`` =
``forig``, ``morig`` through Codec 2 at 2400 bit/s), concatenations (``hts`` = ``hts1`` + ``hts2``,
``wav/all``) and excerpts (``hts1a``, ``hts2a``, ``ve9qrp_10s``), and the ``wav/`` copies of ``raw/`` files.
So only the recordings in :data:`RECORDINGS` are read, chosen by listening through whisper-tiny.en and by
comparing contents. ``ve9qrp`` (112 s) is cut at pauses into pieces of at most 20 s.

Speakers: Harvard-sentence readers (``hts1`` male, ``hts2`` female, ``forig`` female, ``morig`` male, ``mmt1``,
``big_dog``, ``cross``) and radio amateurs calling their call signs (``cq_ref``, ``g3plx``, ``kristoff``,
``ve9qrp``, ``vk5qi``, ``wia_16kHz``): about 10 voices (some sentence readers may be one person).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speechprune.data.manifest import Utterance
from speechprune.data.sources.common import require
from speechprune.data.unlabelled.cache import Clip, Decoded, build_source, decode_soundfile

NAME = "codec2"
PACKAGE = "codec2-examples"
ROOT = Path("/usr/share/codec2")
RULES = 1
RAW_RATE = 8000
# speech recordings, as paths under ROOT; the id is the file stem
RECORDINGS = (
    "raw/big_dog.raw", "raw/cross.raw", "raw/forig.raw", "raw/morig.raw", "raw/mmt1.raw", "raw/hts1.raw",
    "raw/hts2.raw", "raw/kristoff.raw", "raw/cq_ref.raw", "raw/g3plx.raw", "raw/ve9qrp.raw", "raw/vk5qi.raw",
    "wav/wia_16kHz.wav",
)

# clips in which whisper-tiny.en heard no words (criterion: speechprune.data.unlabelled's docstring)
NOT_SPEECH: frozenset[str] = frozenset()  # every piece was heard as words


def decode_raw_s16(data: bytes, rate: int = RAW_RATE) -> Decoded:
    """Headerless signed 16-bit little-endian mono samples (a trailing odd byte is ignored) and their rate."""
    usable = len(data) - len(data) % 2
    return np.frombuffer(data[:usable], dtype="<i2"), rate


def decode_file(path: Path) -> Decoded:
    data = path.read_bytes()
    return decode_raw_s16(data) if path.suffix == ".raw" else decode_soundfile(data)


def read_codec2(root: Path = ROOT, progress: bool = False) -> list[Utterance]:
    """The speech recordings, decoded once into the cache (long ones in pieces ``codec2/<stem>/000``...)."""
    files = [require(root / rel, PACKAGE) for rel in RECORDINGS]
    utts = build_source(NAME, RULES, files, lambda: [Clip(p.stem, lambda p=p: decode_file(p)) for p in files],
                        progress)
    return [u for u in utts if u.id.split("/", 1)[1] not in NOT_SPEECH]
