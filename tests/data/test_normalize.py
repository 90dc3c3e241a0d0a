"""normalize_text (Whisper's normalizers) and asterisk_reference (prompt text -> what a listener writes)."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest

from speechprune.data.normalize import asterisk_reference, english_spelling_map, normalize_text

WHISPER_ENGLISH_SHA256 = "6607f948be9824d2e1b2fa2223cd94c06c45afa4e05ea0e3d5e1f2bdffde2465"


def test_vendored_spelling_map_is_the_audited_file() -> None:
    data = resources.files("speechprune.data").joinpath("resources", "whisper_english.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == WHISPER_ENGLISH_SHA256
    assert english_spelling_map()["colour"] == "color"


@pytest.mark.parametrize(
    ("hypothesis", "reference"),
    [
        ("Press 1.", "press one"),  # Whisper's normalizer keeps a lone "1" as the word "one"
        ("Dial 2 now.", "dial two now"),
        ("Call forward on busy", "Call-Forward on Busy."),
        ("H.323", "H.323"),
        ("1-800", "1-800"),
        ("The colour", "the color"),
        ("It's done.", "it is done"),
    ],
)
def test_whisper_style_hypothesis_matches_reference(hypothesis: str, reference: str) -> None:
    assert normalize_text(hypothesis) == normalize_text(reference)


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("Press 1.", "press one"),
        ("Dial two now.", "dial 2 now"),
        ("Call-Forward on Busy.", "call forward on busy"),
        ("H.323", "h.323"),
        ("1-800", "one 800"),
        ("At the sound of the tone, the time will be exactly...", "at the sound of the tone the time will be exactly"),
        ("...", ""),
        ("", ""),
    ],
)
def test_english_normalization(text: str, normalized: str) -> None:
    assert normalize_text(text) == normalized
    assert normalize_text(text, None) == normalized


def test_non_english_uses_the_basic_normalizer() -> None:
    assert normalize_text("¿Qué tal, señor? [risas]", "es") == "qué tal señor"
    assert normalize_text("colour", "fr") == "colour"  # no English spelling map
    assert normalize_text("colour", "en-GB") == "color"


@pytest.mark.parametrize(
    ("raw", "reference"),
    [
        ("at [@]", "at"),
        ("dash [-]", "dash"),
        ("space [ ]", "space"),
        ("exclaimation-point [!]", "exclamation-point"),
        ("press * to toggle pause, press # to enter a new dictation filename",
         "press star to toggle pause, press pound to enter a new dictation filename"),
        ("Enter a numeric dictation filename followed by # or just # to exit",
         "Enter a numeric dictation filename followed by pound or just pound to exit"),
        ("Please enter one or more keywords separated by * and then press the pound key.",
         "Please enter one or more keywords separated by star and then press the pound key."),
        ("IAX (note: does not say \"2\")", "IAX"),
        ("When done hang up or press the pound key. (simple tone sound plays)", "When done hang up or press the pound key."),
        ("...to exit the menu.", "to exit the menu."),
        ("Press ...", "Press"),
        ("Un-indentified or witheld and therefore cannot be called back.",
         "Unidentified or withheld and therefore cannot be called back."),
        ("De-activated.", "Deactivated."),
        ("fourtieth", "fortieth"),
        ("H.323", "H.323"),
        ("Call-Forward on No Answer.", "Call-Forward on No Answer."),
        ("[ascending tones]", ""),
        ("(10 seconds of silence)", ""),
        ("<beep ascending>", ""),
    ],
)
def test_asterisk_reference(raw: str, reference: str) -> None:
    assert asterisk_reference(raw) == reference


@pytest.mark.parametrize(
    ("raw", "hypothesis"),
    [
        ("exclaimation-point [!]", "Exclamation point."),
        ("press * to toggle pause, press # to enter a new dictation filename",
         "Press star to toggle pause. Press pound to enter a new dictation filename."),
        ("Un-indentified or witheld and therefore cannot be called back.",
         "Unidentified or withheld and therefore cannot be called back."),
        ("fourtieth", "40th"),
        ("At the sound of the tone, the time will be exactly...", "At the sound of the tone, the time will be exactly"),
        ("press 1 to accept this call, or 2 to reject it", "Press one to accept this call, or two to reject it."),
    ],
)
def test_asterisk_reference_matches_whisper_style_text(raw: str, hypothesis: str) -> None:
    assert normalize_text(asterisk_reference(raw)) == normalize_text(hypothesis)


def test_importing_the_data_package_does_not_load_transformers() -> None:
    import subprocess
    import sys

    code = "import sys, speechprune.data; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
