"""Drascula: The Vampire Strikes Back (Debian ``drascula``): English game voice acting.

Audio: ``/usr/share/scummvm/drascula/en/<P><N>.ALS``, raw unsigned 8-bit mono at 11,025 Hz after a 32-byte
header and before a 32-byte trailer (how ScummVM's ``DrasculaEngine::playFile`` plays them). Texts: the
English subtitles (language 0) in ScummVM's ``drascula.dat``, of which the package ships its own copy next to
the voices (``/usr/share/scummvm/drascula/en/drascula.dat``, the same file as ``scummvm-data``'s); the file
prefix ``P`` picks
the table and ``N`` the line, as in ScummVM's ``engines/drascula/talk.cpp`` (``talk(N)`` plays ``N.als`` over
``_text[N]``, ``talk_igor(N)`` plays ``I<N>.als`` over ``_texti[N]``, ...). Prefix ``S`` (sound effects) and
``F`` (no table) are not speech with a text.

Characters by table: John Hacker (no prefix, and ``D56``-``D67``), Count Drascula (``D`` up to 55), the blind
man (``D68`` on), the drunk (``B``), B.J. (``BJ``), Uncle Desiderio (``E``), Igor (``I``), the werewolf
(``L``), the pianist (``P``), the bartender (``T``) and Von Braun (``VB``): 11 characters. The cast list is not
in the package, so an actor voicing two of them would make fewer voices.

``drascula.dat`` layout (big-endian; ScummVM ``DrasculaEngine::loadDrasculaDat``): ``"DRASCULA"``, a version
byte, 13 tables of fixed-size records (``u16`` count each) that are skipped here, ``u16`` number of languages,
then 15 text tables: ``u16`` count, and per language ``u16`` byte length and a block of 2 padding bytes followed
by, per line, ``u16`` entry size (itself included) and the NUL-terminated, zero-padded string.

Subtitles are upper case and not always verbatim: ScummVM has since reworded about a third of the English lines,
and those (:data:`REVISED_AFTER_RECORDING`) are left out, since their text is no longer what is recorded. A
reference is the line through :func:`~speechprune.data.normalize.subtitle_reference` with :data:`WORD_FIXES`
(subtitle typos), and shouted elongations collapsed (a letter written three or more times in a row counts once:
``YOUUU`` -> ``YOU``). Also left out: lines that are mostly laughter and interjections without a standard spelling
(at least half their words in :data:`INTERJECTIONS`: ``HA, HA, HA``, ``BLA, BLA, BLA``), and the lines in
:data:`DROPPED`, each for the reason given there. Listening through two models (Whisper tiny.en and base) found
one more recording of the wrong line (``D26``); their remaining errors are left to be scored (accents, 8-bit
audio, names).
"""

from __future__ import annotations

import re
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from speechprune.data.manifest import Utterance
from speechprune.data.normalize import normalize_text, subtitle_reference
from speechprune.data.sources.common import converted_wav, fingerprint, require, source_cache
from speechprune.errors import ConfigError

NAME = "drascula"
VOICE_DIR = Path("/usr/share/scummvm/drascula/en")
TEXT_FILE = VOICE_DIR / "drascula.dat"
PACKAGE = "drascula"
ALS_RATE = 11025
ALS_HEADER = 32  # bytes before the samples
ALS_TRAILER = 32  # bytes after them

MAGIC = b"DRASCULA"
# record sizes of the tables before the texts: charMap, itemLocations, polX/Y, verbBarX, x1d/y1d menu, frameX,
# candleX/Y, pianistX, drunkX, roomPreUpdates, roomUpdates, roomActions, talkSequences
HEADER_RECORD_SIZES = (4, 4, 4, 2, 4, 2, 4, 2, 2, 20, 20, 10, 8)
TEXT_TABLES = ("text", "textd", "textb", "textbj", "texte", "texti", "textl", "textp", "textt", "textvb",
               "textsys", "texthis", "textverbs", "textmisc", "textd1")
ENGLISH = 0
# voice-file prefix -> text table
VOICE_TABLES = {"": "text", "D": "textd", "B": "textb", "BJ": "textbj", "E": "texte", "I": "texti",
                "L": "textl", "P": "textp", "T": "textt", "VB": "textvb"}
_VOICE_FILE = re.compile(r"([A-Za-z]*)(\d+)\.als", re.IGNORECASE)

# subtitle typos -> what is said (lower-case whole words)
WORD_FIXES: dict[str, str] = {}
# words of laughter and interjections that have no standard spelling (after collapsing elongations)
INTERJECTIONS = frozenset({"ha", "ho", "hu", "ah", "ahh", "aah", "aahh", "bla", "hic", "wof", "jam", "jamm", "sh"})
_ELONGATION = re.compile(r"([A-Za-z])\1{2,}")
# Lines whose English subtitle ScummVM reworded after the recordings were made (compared word for word, after
# normalization, with the English of ScummVM's engines/drascula/texts.cpp of 2008, the recording script): the
# current text is not what is said ("IT'S TOO TOUGH FOR ME" over a recording of "it's too much for me").
REVISED_AFTER_RECORDING = frozenset("""
    1 7 8 28 32 33 42 56 108 117 120 121 122 126 128 129 130 132 134 137 138 140 147 149 150 151 152 154 156
    157 160 161 162 164 166 167 173 174 177 178 182 185 189 194 198 199 201 207 214 215 221 222 234 235 237
    238 244 245 247 249 251 252 256 258 260 263 264 265 270 278 281 285 290 295 298 305 307 309 316 328 333
    334 336 337 340 343 347 361 362 367 368 369 370 372 374 379 393 397 407 409 411 420 423 425 426 428 429
    433 434 439 441 444 445 448 450 452 457 458 459 460 461 465 472 476 485 489 490 493 494 B2 B4 B6 B11 B12
    B14 BJ4 BJ8 BJ9 BJ13 BJ15 BJ17 BJ18 BJ19 BJ20 BJ27 D4 D6 D11 D12 D13 D16 D17 D18 D21 D28 D29 D30 D31 D32
    D33 D38 D58 D60 D67 D70 D73 D74 D75 D82 E8 E10 E11 E19 E20 I1 I4 I5 I6 I8 I14 I16 I17 I20 L1 L2 L4 L7 L9
    L10 L11 L12 L13 P7 P11 P18 T1 T2 T4 T5 T8 T9 T13 T16 T18 T19 VB3 VB8 VB13 VB17 VB20 VB23 VB24 VB27 VB28
    VB29 VB33 VB35 VB37 VB39 VB40 VB42 VB43 VB44 VB46 VB48 VB54 VB60 VB61 VB62
""".split())
# utterance id -> why it is left out
DROPPED: dict[str, str] = {
    "144": "sung nonsense syllables ('DUBIDUBIDU...') with no spelling to score",
    "296": "the swearing is bleeped with whistles; the subtitle spells 'F...'",
    "324": "a cut-off word ('EXCUS...')",
    "D26": "the recording is line D27's ('put that cigarette out now...'), not this line",
}


def decode_als(data: bytes) -> np.ndarray:
    """Samples of an ``.ALS`` voice file: unsigned 8-bit after the 32-byte header, without the 32-byte trailer, as
    float32 in [-1, 1) at :data:`ALS_RATE`. ValueError when nothing is left."""
    body = data[ALS_HEADER : len(data) - ALS_TRAILER]
    if not body:
        raise ValueError(f"an .ALS file needs more than {ALS_HEADER + ALS_TRAILER} bytes, got {len(data)}")
    return (np.frombuffer(body, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0


class _Reader:
    """Big-endian reads over bytes; running past the end raises ValueError."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"truncated at byte {self.pos} (wanted {n} more, {len(self.data) - self.pos} left)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]


def _text_block(block: bytes, count: int) -> list[str]:
    """The ``count`` strings of one language's block (2 padding bytes, then size-prefixed entries)."""
    texts, pos = [], 2
    for i in range(count):
        if pos + 2 > len(block):
            raise ValueError(f"text {i} of {count} runs past its block")
        size = struct.unpack(">H", block[pos : pos + 2])[0]
        if size < 3 or pos + size > len(block):
            raise ValueError(f"text {i} has a bad size {size}")
        texts.append(block[pos + 2 : pos + size].split(b"\0", 1)[0].decode("latin-1"))
        pos += size
    if pos != len(block):
        raise ValueError(f"block holds {len(block) - pos} bytes after its {count} texts")
    return texts


def parse_text_tables(data: bytes, language: int = ENGLISH) -> dict[str, list[str]]:
    """``{table: [line, ...]}`` of one language from ``drascula.dat`` bytes (layout in the module docstring).
    ValueError when the bytes are not such a file or do not parse to exactly their end."""
    r = _Reader(data)
    if r.take(len(MAGIC)) != MAGIC:
        raise ValueError("not a drascula.dat file (no DRASCULA magic)")
    r.take(1)  # version: the layout is checked by parsing to the end instead
    for size in HEADER_RECORD_SIZES:
        r.take(r.u16() * size)
    languages = r.u16()
    if not 0 <= language < languages:
        raise ValueError(f"language {language} not in the file ({languages} languages)")
    tables: dict[str, list[str]] = {}
    for name in TEXT_TABLES:
        count = r.u16()
        for lang in range(languages):
            block = r.take(r.u16())
            if lang == language:
                tables[name] = _text_block(block, count)
    if r.pos != len(data):
        raise ValueError(f"{len(data) - r.pos} bytes after the last text table")
    return tables


def voice_file_key(filename: str) -> tuple[str, int] | None:
    """(prefix, line) of a voice file name such as ``BJ12.ALS`` -> ("BJ", 12); None for files that are not speech
    with a subtitle table (sound effects ``S*``, ``F*``, pictures)."""
    m = _VOICE_FILE.fullmatch(filename)
    if not m or m.group(1).upper() not in VOICE_TABLES:
        return None
    return m.group(1).upper(), int(m.group(2))


def reference_for(raw: str) -> str:
    """A subtitle line as a reference: cleaned, typos fixed, elongations collapsed (see the module docstring)."""
    return _ELONGATION.sub(r"\1", subtitle_reference(raw, WORD_FIXES))


def is_mostly_interjection(text: str) -> bool:
    """True when at least half the words of a reference are :data:`INTERJECTIONS` (or it has no words)."""
    words = re.findall(r"[a-z']+", text.lower())
    return not words or 2 * sum(w in INTERJECTIONS for w in words) >= len(words)


def read_drascula(voice_dir: Path = VOICE_DIR, text_file: Path = TEXT_FILE) -> list[Utterance]:
    """Every English voice line with a subtitle, sorted by id (the file stem: ``123``, ``D5``, ``VB12``); audio
    converted once into the cache. ConfigError when a package is missing or ``drascula.dat`` does not parse."""
    require(voice_dir, PACKAGE, "Drascula English voice folder", want_dir=True)
    require(text_file, PACKAGE, "Drascula subtitle tables (drascula.dat)", want_dir=False)
    return list(_read(voice_dir.resolve(), text_file.resolve(), source_cache(NAME)))


@lru_cache(maxsize=4)
def _read(voice_dir: Path, text_file: Path, cache: Path) -> tuple[Utterance, ...]:
    try:
        tables = parse_text_tables(text_file.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"cannot read the subtitle tables ({exc})", text_file) from None
    out = []
    for path in sorted(voice_dir.iterdir()):
        key = voice_file_key(path.name)
        if key is None or not path.is_file():
            continue
        prefix, line = key
        utt_id = f"{prefix}{line}"
        table = tables[VOICE_TABLES[prefix]]
        if line >= len(table) or utt_id in DROPPED or utt_id in REVISED_AFTER_RECORDING:
            continue
        text = reference_for(table[line])
        if not normalize_text(text) or is_mostly_interjection(text):
            continue
        data = path.read_bytes()
        try:
            wav, duration = converted_wav(cache, utt_id, fingerprint(data), lambda: (decode_als(data), ALS_RATE))
        except ValueError as exc:
            raise ConfigError(str(exc), path) from None
        out.append(Utterance(id=utt_id, audio=wav, text=text, language="en", task="transcribe", duration=duration))
    return tuple(sorted(out, key=lambda u: _sort_key(u.id)))


def _sort_key(utt_id: str) -> tuple[str, int]:
    m = re.fullmatch(r"([A-Z]*)(\d+)", utt_id)
    return (m.group(1), int(m.group(2))) if m else (utt_id, -1)
