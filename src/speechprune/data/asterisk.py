"""The bundled evaluation set: Asterisk's English prompts (Debian ``asterisk-core-sounds-en-wav`` + ``-en``).

One speaker, 8 kHz telephone recordings, CC-BY-SA-3.0. Audio: ``/usr/share/asterisk/sounds/en/**.wav``;
texts: ``/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz`` (``name: text`` lines, ``;``
comments). Override the locations with ``$SPEECHPRUNE_ASTERISK_SOUNDS`` and ``$SPEECHPRUNE_ASTERISK_TEXT``.

An utterance's id is its path under the sounds folder without ``.wav`` (``digits/1``, ``agent-pass``).
Its reference is :func:`~speechprune.data.normalize.asterisk_reference` of the text; files without a
text, and texts that are only annotations (``[ascending tones]``, ``(5 seconds of silence)``,
``<beep ascending>``), are left out.

Split, fixed by the id alone: ``test`` when ``int(sha256(id.encode()).hexdigest()[:8], 16) / 2**32 < 0.5``,
else ``dev`` (about half each, disjoint); ``all`` is both. Subset ``multiword``: utterances whose
normalized reference has at least two words (single digits, letters and words are the hard, noisy part).

The same prompts in Spanish, French, Italian and Russian (Debian ``asterisk-core-sounds-{es,fr,it,ru}-wav`` + the
plain package for ``core-sounds-XX.txt.gz``; one speaker each, CC-BY-SA-3.0): ``language`` picks them, with
``$SPEECHPRUNE_ASTERISK_SOUNDS_ES`` / ``$SPEECHPRUNE_ASTERISK_TEXT_ES`` (and so on) as overrides. Their references
are :func:`~speechprune.data.normalize.plain_reference` of the text (annotations dropped, accents kept); their ids
are ``<language>/<prompt>`` (``es/digits/1``), so languages pooled in one run stay distinct. Task ``translate``
pairs each clip with the English text of the same prompt as ``translation`` (ids ``es-en/<prompt>``; prompts
without an English text are left out). Every language and task is split by the prompt name with the rule above,
so a prompt is in the same split in every language and in English: no test prompt is seen while training.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from functools import lru_cache
from pathlib import Path

from speechprune.data.audio import audio_duration
from speechprune.data.manifest import Utterance
from speechprune.data.normalize import asterisk_reference, normalize_text
from speechprune.errors import ConfigError

SOUNDS_ENV = "SPEECHPRUNE_ASTERISK_SOUNDS"
TEXT_ENV = "SPEECHPRUNE_ASTERISK_TEXT"
DEFAULT_SOUNDS = Path("/usr/share/asterisk/sounds/en")
DEFAULT_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
SPLITS = ("dev", "test", "all")
SUBSETS = ("all", "multiword")
TEST_FRACTION = 0.5
LANGUAGES = ("en", "es", "fr", "it", "ru")
TASKS = ("transcribe", "translate")


def check_language_task(language: str, task: str, languages: tuple[str, ...], what: str) -> None:
    """A one-line ConfigError for a language outside ``languages`` or an unknown task; translation is into English,
    so English has nothing to translate."""
    if language not in languages:
        raise ConfigError(f"unknown language {language!r} for the {what} set (choose from {', '.join(languages)})")
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r} for the {what} set (choose from {', '.join(TASKS)})")
    if task == "translate" and language == "en":
        raise ConfigError(f"the {what} set translates into English: English speech has no translate task")


def _sounds_default(language: str) -> Path:
    return DEFAULT_SOUNDS if language == "en" else DEFAULT_SOUNDS.parent / language


def _text_default(language: str) -> Path:
    if language == "en":
        return DEFAULT_TEXT
    return Path(f"/usr/share/doc/asterisk-core-sounds-{language}/core-sounds-{language}.txt.gz")


def _env(base: str, language: str) -> str:
    return base if language == "en" else f"{base}_{language.upper()}"


def _located(env: str, default: Path, package: str, want_dir: bool) -> Path:
    """The path from ``$env`` or ``default``; a one-line ConfigError with the install command when absent."""
    value = os.environ.get(env)
    path = Path(value).expanduser() if value else default
    if want_dir and path.is_dir() or not want_dir and path.is_file():
        return path
    source = f"set by ${env}" if value else f"set ${env} to use another location"
    kind = "folder" if want_dir else "file"
    raise ConfigError(
        f"Asterisk prompt {kind} not found ({source}); install it with: sudo apt-get install {package}", path
    )


def sounds_dir(language: str = "en") -> Path:
    """Folder of the prompt WAVs in ``language`` (``asterisk-core-sounds-<language>-wav``)."""
    check_language_task(language, "transcribe", LANGUAGES, "asterisk")
    return _located(_env(SOUNDS_ENV, language), _sounds_default(language),
                    f"asterisk-core-sounds-{language}-wav", want_dir=True)


def text_file(language: str = "en") -> Path:
    """The prompt texts file in ``language`` (``asterisk-core-sounds-<language>``)."""
    check_language_task(language, "transcribe", LANGUAGES, "asterisk")
    return _located(_env(TEXT_ENV, language), _text_default(language), f"asterisk-core-sounds-{language}",
                    want_dir=False)


def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace").removeprefix("\ufeff")  # the Italian file starts with a BOM


def parse_prompt_texts(content: str, source: Path | str | None = None) -> dict[str, str]:
    """``{name: raw text}`` from ``core-sounds-en.txt`` content; blank and ``;`` lines are skipped."""
    texts: dict[str, str] = {}
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        name, sep, text = line.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"line {lineno}: expected 'name: text'", source)
        texts[name.strip()] = text.strip()
    return texts


def split_of(utt_id: str) -> str:
    """"test" or "dev", from the SHA-256 of the id (see the module docstring)."""
    h = int(hashlib.sha256(utt_id.encode("utf-8")).hexdigest()[:8], 16)
    return "test" if h / 2**32 < TEST_FRACTION else "dev"


def is_multiword(reference: str, language: str = "en") -> bool:
    """True when the normalized reference has two or more words."""
    return len(normalize_text(reference, language).split()) >= 2


def prompt_of(utt_id: str) -> str:
    """The prompt name an utterance id holds: ``digits/1`` for ``digits/1``, ``es/digits/1`` and ``es-en/digits/1``."""
    head, sep, rest = utt_id.partition("/")
    base = head.removesuffix("-en")
    return rest if sep and base in LANGUAGES and base != "en" else utt_id


def _wav_ids(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in folder.rglob("*.wav") if p.is_file()}


@lru_cache(maxsize=16)
def _references(texts_path: Path, language: str) -> dict[str, str]:
    """``{prompt: reference}`` of the prompts whose reference is not empty once normalized."""
    texts = parse_prompt_texts(_read_text_file(texts_path), texts_path)
    refs = {name: asterisk_reference(text, language) for name, text in texts.items()}
    return {name: ref for name, ref in refs.items() if normalize_text(ref, language)}


@lru_cache(maxsize=16)
def _all_utterances(folder: Path, texts_path: Path, language: str = "en", english: Path | None = None
                    ) -> tuple[Utterance, ...]:
    """Every prompt in ``folder`` with a reference; with ``english`` (the English texts file) the translate pairs."""
    refs = _references(texts_path, language)
    targets = _references(english, "en") if english is not None else None
    prefix = "" if language == "en" else f"{language}-en/" if targets is not None else f"{language}/"
    utterances = []
    for name, wav in sorted(_wav_ids(folder).items()):
        if name not in refs or targets is not None and name not in targets:
            continue
        utterances.append(
            Utterance(
                id=prefix + name,
                audio=Path(os.path.abspath(wav)),
                text=refs[name],
                language=language,
                task="transcribe" if targets is None else "translate",
                translation=None if targets is None else targets[name],
                duration=audio_duration(wav),
            )
        )
    return tuple(utterances)


def asterisk_utterances(split: str = "test", subset: str = "all", language: str = "en",
                        task: str = "transcribe") -> list[Utterance]:
    """The prompts of ``split`` ("dev", "test", "all") and ``subset`` ("all", "multiword") in ``language``
    (:data:`LANGUAGES`) for ``task`` ("transcribe"; "translate" into English for a language other than English),
    sorted by id."""
    check_language_task(language, task, LANGUAGES, "asterisk")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} for the asterisk set (choose from {', '.join(SPLITS)})")
    if subset not in SUBSETS:
        raise ConfigError(f"unknown subset {subset!r} for the asterisk set (choose from {', '.join(SUBSETS)})")
    folder, texts_path = sounds_dir(language), text_file(language)
    english = text_file("en") if task == "translate" else None
    return [
        u
        for u in _all_utterances(folder, texts_path, language, english)
        if (split == "all" or split_of(prompt_of(u.id)) == split)
        and (subset == "all" or is_multiword(u.text, language))
    ]
