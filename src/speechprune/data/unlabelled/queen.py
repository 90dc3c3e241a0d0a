"""Flight of the Amazon Queen (Debian ``flight-of-the-amazon-queen``): the talkie CD's voice acting.

Everything is in one resource file, ``/usr/share/scummvm/flight-of-the-amazon-queen/queen.1c`` (the Debian
package ships no separate ``queen.tbl``: this "rebuilt" file carries its own table). Layout, as ScummVM's
``engines/queen/resource.cpp`` reads it (``Resource::detectVersion`` and ``readTableEntries``), big-endian::

    "QTBL"  version string (6 bytes, NUL-padded, "CEM10" = CD English)  2 bytes skipped  u8 compression
    u16 entry count, then per entry: name (12 bytes, NUL-padded, "020006J1.SB"), u8 bundle, u32 offset, u32 size

Compression (ScummVM ``Sound::makeSoundInstance``): 0 = none (a ``.SB`` holds a 110- or 122-byte header, by its
u16 LE version 104 or 110 at byte 2, then unsigned 8-bit samples at 11,025 Hz), 1 = MP3, 2 = Ogg Vorbis,
3 = FLAC (the whole entry is one compressed file). Debian's file is MP3 (MPEG-2.5 layer III, 16 kb/s, 11,025 Hz):
6,745 ``.SB`` entries, 4.6 h.

Speech vs effects, by name (ScummVM ``Sound::playSfx`` and the talk code): sound effects are named by a number
padded with ``S`` to 8 characters (``88SSSSSS``, ``1001SSSS``, ``103ASSSS``) and are left out; every other
``.SB`` is a spoken line (``020006J1``, ``020006P1``: dialogue, ``J`` seemingly Joe and ``P`` the person he
talks to; ``C01A_001``: a cut-scene line; ``JOE00012``: Joe's comments). Byte-identical entries are read once
(the intro's 30 lines are stored as both ``CDINT*`` and ``CINTR*``; 34 copies in all). The lines in
:data:`NOT_SPEECH` (screams, grunts, a sound effect with a speech-like name) were found by whisper-tiny.en.

Speakers: Joe King plus the characters he talks to (30 conversation partners have ``.DOG`` dialogue files:
``BOB1.DOG``, ``FAYE2.DOG``, ``FRANK.DOG``, ``SPARKY1.DOG``, ``ORACLE1.DOG``...) and cut-scene voices. The cast list is
not in the package, so an actor voicing several characters would make fewer voices than characters.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechprune.data.manifest import Utterance
from speechprune.data.sources.common import require
from speechprune.data.unlabelled.cache import Clip, Decoded, build_source, decode_soundfile
from speechprune.errors import ConfigError

NAME = "queen"
PACKAGE = "flight-of-the-amazon-queen"
RESOURCE = Path("/usr/share/scummvm/flight-of-the-amazon-queen/queen.1c")
RULES = 2  # version of the clip selection below: bump to rebuild the cache

MAGIC = b"QTBL"
HEADER = struct.Struct(">4s6s2xB")  # magic, version string, skipped, compression
ENTRY = struct.Struct(">12sBII")  # name, bundle, offset, size
COMPRESSION_NONE, COMPRESSION_MP3, COMPRESSION_OGG, COMPRESSION_FLAC = 0, 1, 2, 3
SB_RATE = 11025
SB_HEADER_SIZES = {104: 110, 110: 122}  # .SB version -> header bytes (ScummVM SBSound::playSoundData)
_SFX_NAME = re.compile(r"\d+[A-Z]?S+")  # a number padded with S: a sound effect

# clips in which whisper-tiny.en heard no words (criterion and sample: speechprune.data.unlabelled's docstring)
NOT_SPEECH: frozenset[str] = frozenset({
    "0312B4P3", "080006P1", "1200B3P6", "20001FP1", "24001FP1", "29001EP1", "29002AP1", "330032P1", "340028P1",
    "34002AP1", "360001P1", "480008P2", "48040BP2", "500023P1", "580007P1", "61SSSSJ2", "C18D_201", "C21E_131",
    "C21Q_041", "C30C_131", "C31C_011", "C41C_011", "C41C_032", "C50B_011", "C51C_011", "C51D_011", "C63C_052",
    "C69Z_351", "C76B_102", "COMIC141", "MIK_0136", "MIK_0138", "ROCKPAKS", "TOM_0826",
})


@dataclass(frozen=True)
class Entry:
    """One file inside the resource file."""

    name: str  # upper case, with extension: "020006J1.SB"
    bundle: int
    offset: int
    size: int


@dataclass(frozen=True)
class Table:
    version: str  # "CEM10": platform C(D)/P(C floppy), language E, version 10
    compression: int
    entries: tuple[Entry, ...]


def parse_table(data: bytes) -> Table:
    """The ``QTBL`` header and entry table at the start of ``data`` (a rebuilt ``queen.1c``, or just its head).

    Raises ValueError when the magic is wrong or the table is cut short.
    """
    if len(data) < HEADER.size + 2:
        raise ValueError(f"{len(data)} bytes, too short for a QTBL header")
    magic, version, compression = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"no QTBL table (starts with {magic!r}): not a rebuilt Flight of the Amazon Queen file")
    (count,) = struct.unpack_from(">H", data, HEADER.size)
    start = HEADER.size + 2
    if len(data) < start + count * ENTRY.size:
        raise ValueError(f"table of {count} entries is cut short ({len(data)} bytes)")
    entries = []
    for i in range(count):
        raw, bundle, offset, size = ENTRY.unpack_from(data, start + i * ENTRY.size)
        entries.append(Entry(raw.split(b"\0", 1)[0].decode("ascii", "replace"), bundle, offset, size))
    return Table(version.split(b"\0", 1)[0].decode("ascii", "replace"), compression, tuple(entries))


def table_size(count: int) -> int:
    """Bytes taken by the header and a table of ``count`` entries."""
    return HEADER.size + 2 + count * ENTRY.size


def decode_sb(data: bytes, compression: int) -> Decoded:
    """Samples and rate of one ``.SB`` entry's bytes, for the file's ``compression``."""
    if compression in (COMPRESSION_MP3, COMPRESSION_OGG, COMPRESSION_FLAC):
        return decode_soundfile(data)
    if compression == COMPRESSION_NONE:
        if len(data) < 4:
            raise ValueError(f"{len(data)}-byte .SB entry has no header")
        (version,) = struct.unpack_from("<H", data, 2)
        header = SB_HEADER_SIZES.get(version, SB_HEADER_SIZES[104])  # ScummVM's default for unknown versions
        return np.frombuffer(data[header:], dtype=np.uint8), SB_RATE
    raise ValueError(f"unknown compression {compression}")


def is_speech_name(name: str) -> bool:
    """True for a ``.SB`` entry that holds a spoken line (not a sound effect), by its name."""
    stem, dot, ext = name.upper().rpartition(".")
    return bool(dot) and ext == "SB" and not _SFX_NAME.fullmatch(stem)


def speech_entries(table: Table) -> list[Entry]:
    """The spoken lines of ``table`` (bundle 1, the only one a rebuilt file has), sorted by name."""
    return sorted((e for e in table.entries if e.bundle == 1 and is_speech_name(e.name)), key=lambda e: e.name)


def unique_entries(entries: list[Entry], data: bytes) -> list[Entry]:
    """``entries`` without later byte-identical copies (the intro lines exist as ``CDINT*`` and ``CINTR*``)."""
    seen: set[bytes] = set()
    out = []
    for e in entries:
        digest = hashlib.sha256(data[e.offset:e.offset + e.size]).digest()
        if digest not in seen:
            seen.add(digest)
            out.append(e)
    return out


def _clip(path: Path, entry: Entry, compression: int) -> Clip:
    def decode() -> Decoded:
        with open(path, "rb") as f:
            f.seek(entry.offset)
            data = f.read(entry.size)
        if len(data) != entry.size:
            raise ValueError(f"{entry.name} runs past the end of the file")
        return decode_sb(data, compression)

    return Clip(entry.name.rsplit(".", 1)[0], decode)


def read_queen(resource: Path = RESOURCE, progress: bool = False) -> list[Utterance]:
    """The spoken lines, decoded once into the cache; ids ``queen/<name without .SB>``."""
    require(resource, PACKAGE)
    data = resource.read_bytes()
    try:
        table = parse_table(data)
    except ValueError as exc:
        raise ConfigError(str(exc), resource) from None
    if not table.version.startswith("CE"):
        raise ConfigError(f"game version {table.version!r} is not the English talkie (CE...)", resource)

    def clips() -> list[Clip]:
        return [_clip(resource, e, table.compression) for e in unique_entries(speech_entries(table), data)]

    utts = build_source(NAME, RULES, [resource], clips, progress)
    return [u for u in utts if u.id.split("/", 1)[1] not in NOT_SPEECH]
