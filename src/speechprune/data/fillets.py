"""Czech and Dutch voice acting from Fish Fillets NG (Debian ``fillets-ng-data-cs``, ``fillets-ng-data-nl`` and
``fillets-ng-data`` for the scripts; GPL-2): several speakers, 22,050 Hz Ogg Vorbis.

Audio: ``<root>/sound/<level>/<language>/<dialog id>.ogg``; texts: ``<root>/script/<level>/dialogs_<language>.lua``,
where ``dialogId("id", "font", "English line")`` is followed by ``dialogStr("line in the language")``. The Lua files
are read by a small tokenizer (strings, names, punctuation, comments), never executed; any other call in them is
ignored. ``root`` is ``/usr/share/games/fillets-ng`` or ``$SPEECHPRUNE_FILLETS_DIR``.

An utterance's id is ``<language>/<level>/<dialog id>`` (task ``translate``: ``<language>-en/...``); its reference
is :func:`~speechprune.data.normalize.plain_reference` of the ``dialogStr`` text; ``translate`` puts the English
line of the same ``dialogId`` call (the line the translator translated) in ``translation``. Lines without audio
(or with an empty audio file) or with an empty text on either side (for translate) are left out. The split is
:func:`speechprune.data.asterisk.split_of` of the dialog id, the rule every bundled set uses: one dialog id is in
the same split in both languages and both tasks.
"""

from __future__ import annotations

import os
import re
import struct
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from speechprune.data.asterisk import SPLITS, check_language_task, split_of
from speechprune.data.audio import audio_duration
from speechprune.data.manifest import Utterance
from speechprune.data.normalize import normalize_text, plain_reference
from speechprune.errors import ConfigError

ROOT_ENV = "SPEECHPRUNE_FILLETS_DIR"
DEFAULT_ROOT = Path("/usr/share/games/fillets-ng")
LANGUAGES = ("cs", "nl")

_TOKEN = re.compile(
    r"""
    (?P<comment>--\[(?P<ceq>=*)\[.*?\](?P=ceq)\]|--[^\n]*)
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<long>\[(?P<leq>=*)\[.*?\](?P=leq)\])
    |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<number>\d+(?:\.\d+)?)
    |(?P<punct>\.\.\.?|==|~=|<=|>=|[(),;{}=.+\-*/:\[\]#<>^%])
    |(?P<space>\s+)
    """,
    re.S | re.X,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "", "b": "", "f": "", "v": "", "\n": "\n"}


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body, flags=re.S)


def _tokens(content: str, source: Path | str | None) -> Iterator[tuple[str, str, int]]:
    """``(kind, value, line)`` of each Lua token; a string's value is its unescaped text."""
    pos, line = 0, 1
    while pos < len(content):
        m = _TOKEN.match(content, pos)
        if m is None:
            raise ConfigError(f"line {line}: unexpected character {content[pos]!r} in a dialog script", source)
        kind, text = m.lastgroup, m.group()
        if kind == "string":
            yield "string", _unescape(text[1:-1]), line
        elif kind == "long":
            eq = len(m.group("leq"))
            yield "string", text[eq + 2 : len(text) - eq - 2].removeprefix("\n"), line
        elif kind not in ("comment", "space"):
            yield kind, text, line
        line += text.count("\n")
        pos = m.end()


def _calls(content: str, source: Path | str | None) -> Iterator[tuple[str, list[str], int]]:
    """``(function, string arguments, line)`` of each call ``name(...)`` whose arguments hold no nested call."""
    toks = list(_tokens(content, source))
    i = 0
    while i < len(toks) - 1:
        kind, name, line = toks[i]
        if kind == "name" and toks[i + 1][:2] == ("punct", "("):
            j, args = i + 2, []
            while j < len(toks) and toks[j][:2] != ("punct", ")"):
                if toks[j][:2] == ("punct", "("):
                    break  # a nested call: not a dialog line
                if toks[j][0] == "string":
                    args.append(toks[j][1])
                j += 1
            else:
                yield name, args, line
                i = j
        i += 1


def parse_dialogs(content: str, source: Path | str | None = None) -> dict[str, tuple[str, str]]:
    """``{dialog id: (English line, line in the language)}`` from a ``dialogs_<language>.lua`` file: each
    ``dialogId(id, font, English)`` with the ``dialogStr(text)`` after it (text "" when there is none). A
    ``dialogStr`` with no ``dialogId`` before it, or a ``dialogId`` without its three strings, is a one-line
    ConfigError naming the file and line."""
    out: dict[str, tuple[str, str]] = {}
    current: str | None = None
    for name, args, line in _calls(content, source):
        if name == "dialogId":
            if len(args) < 2 or not args[0]:
                raise ConfigError(f"line {line}: dialogId needs an id, a font and an English line", source)
            current = args[0]
            out.setdefault(current, (args[-1], ""))
        elif name == "dialogStr":
            if current is None or len(args) != 1:
                raise ConfigError(f"line {line}: dialogStr without a dialogId before it", source)
            out[current] = (out[current][0], args[0])
            current = None
    return out


def ogg_vorbis_duration(path: Path) -> float:
    """Seconds of an Ogg Vorbis file from its headers alone: the last page's granule position (samples) over the
    rate in the identification header; :func:`~speechprune.data.audio.audio_duration` (which decodes to the end)
    when the file does not look like that."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
            f.seek(max(0, os.path.getsize(path) - 65536))
            tail = f.read()
        ident, last = head.find(b"\x01vorbis"), tail.rfind(b"OggS")
        if head[:4] == b"OggS" and ident >= 0 and last >= 0 and len(tail) >= last + 14:
            rate = struct.unpack("<I", head[ident + 12 : ident + 16])[0]
            samples = struct.unpack("<q", tail[last + 6 : last + 14])[0]
            if rate > 0 and samples > 0:
                return samples / rate
    except OSError:
        pass
    return audio_duration(path)


def root_dir() -> Path:
    """The fillets-ng data folder (``$SPEECHPRUNE_FILLETS_DIR`` or the Debian location)."""
    value = os.environ.get(ROOT_ENV)
    path = Path(value).expanduser() if value else DEFAULT_ROOT
    if (path / "script").is_dir() and (path / "sound").is_dir():
        return path
    source = f"set by ${ROOT_ENV}" if value else f"set ${ROOT_ENV} to use another location"
    raise ConfigError(f"fillets-ng data folder not found ({source}); install it with: sudo apt-get install "
                      "fillets-ng-data fillets-ng-data-cs fillets-ng-data-nl", path)


@lru_cache(maxsize=8)
def _all_utterances(root: Path, language: str, task: str) -> tuple[Utterance, ...]:
    prefix = f"{language}-en" if task == "translate" else language
    utterances = []
    scripts = sorted(root.glob(f"script/*/dialogs_{language}.lua"))
    if not scripts:
        raise ConfigError(f"no script/*/dialogs_{language}.lua: install fillets-ng-data", root)
    for script in scripts:
        level = script.parent.name
        dialogs = parse_dialogs(script.read_text(encoding="utf-8", errors="replace"), script)
        for dialog_id, (english, text) in sorted(dialogs.items()):
            audio = root / "sound" / level / language / f"{dialog_id}.ogg"
            reference, target = plain_reference(text), plain_reference(english)
            if not normalize_text(reference, language) or not audio.is_file():
                continue
            if task == "translate" and not normalize_text(target, "en"):
                continue
            duration = ogg_vorbis_duration(audio)
            if duration <= 0:  # two Dutch files hold no samples
                continue
            utterances.append(
                Utterance(
                    id=f"{prefix}/{level}/{dialog_id}",
                    audio=Path(os.path.abspath(audio)),
                    text=reference,
                    language=language,
                    task=task,
                    translation=target if task == "translate" else None,
                    duration=duration,
                )
            )
    return tuple(sorted(utterances, key=lambda u: u.id))


def dialog_of(utt_id: str) -> str:
    """The dialog id in an utterance id (``cs/airplane/let-m-divna`` -> ``let-m-divna``): what the split hashes."""
    return utt_id.rpartition("/")[2]


def fillets_utterances(language: str, split: str = "test", task: str = "transcribe") -> list[Utterance]:
    """The dialog lines in ``language`` ("cs", "nl") of ``split`` ("dev", "test", "all") for ``task``
    ("transcribe", or "translate" into English), sorted by id."""
    check_language_task(language, task, LANGUAGES, "fillets")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} for the fillets set (choose from {', '.join(SPLITS)})")
    return [u for u in _all_utterances(root_dir(), language, task)
            if split == "all" or split_of(dialog_of(u.id)) == split]
