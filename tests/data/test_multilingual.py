"""The multilingual bundled sets (issue 20, item 1): Asterisk prompts in es/fr/it/ru and Fish Fillets NG in cs/nl,
transcribe and translate-into-English; their split, references, scoring and errors. Real Debian files are parsed
(no audio is decoded); each real-file test skips when its package is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechprune.data import asterisk, festvox, fillets, load_dataset
from speechprune.data.asterisk import asterisk_utterances, prompt_of, split_of
from speechprune.data.datasets import MULTILINGUAL, parse_training_spec
from speechprune.data.fillets import dialog_of, fillets_utterances, parse_dialogs
from speechprune.data.manifest import read_manifest
from speechprune.data.normalize import plain_reference, scoring_text
from speechprune.errors import ConfigError, ManifestError
from speechprune.evaluate.runner import score

LANGS = ("es", "fr", "it", "ru")
# prompts with text and audio; translate pairs (an English text for the same prompt), measured on 1.6.1
ASTERISK_COUNTS = {"es": (477, 451), "fr": (509, 508), "it": (582, 544), "ru": (554, 546)}
FILLETS_COUNTS = {"cs": 1714, "nl": 1526}


@pytest.fixture(scope="module")
def real_asterisk() -> None:
    try:
        for lang in ("en", *LANGS):
            asterisk.sounds_dir(lang), asterisk.text_file(lang)
    except ConfigError as exc:
        pytest.skip(f"Debian asterisk prompts not installed: {exc}")


@pytest.fixture(scope="module")
def real_fillets() -> None:
    try:
        fillets.root_dir()
    except ConfigError as exc:
        pytest.skip(f"Debian fillets-ng data not installed: {exc}")


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in (asterisk.SOUNDS_ENV, asterisk.TEXT_ENV, fillets.ROOT_ENV, festvox.ROOT_ENV,
                *(f"{base}_{lang.upper()}" for base in (asterisk.SOUNDS_ENV, asterisk.TEXT_ENV) for lang in LANGS)):
        monkeypatch.delenv(env, raising=False)


# --- Asterisk in four languages --------------------------------------------------------------------------------

def test_asterisk_counts_and_ids_match_english(real_asterisk: None) -> None:
    english = {u.id for u in asterisk_utterances("all")}
    english_texts = set(asterisk.parse_prompt_texts(asterisk._read_text_file(asterisk.text_file("en"))))
    for lang, (n_texts, n_pairs) in ASTERISK_COUNTS.items():
        utts = asterisk_utterances("all", language=lang)
        pairs = asterisk_utterances("all", language=lang, task="translate")
        assert (len(utts), len(pairs)) == (n_texts, n_pairs) and n_texts > 400
        assert all(u.id == f"{lang}/{prompt_of(u.id)}" and u.language == lang and u.task == "transcribe" for u in utts)
        assert all(u.id == f"{lang}-en/{prompt_of(u.id)}" and u.task == "translate" and u.translation for u in pairs)
        prompts = {prompt_of(u.id) for u in pairs}
        assert prompts <= english_texts and len(prompts & english) > 0.9 * len(prompts)
        assert all(u.audio == asterisk.DEFAULT_SOUNDS.parent / lang / f"{prompt_of(u.id)}.wav" for u in utts[:20])


def test_asterisk_references_drop_annotations_and_pairs_carry_english(real_asterisk: None) -> None:
    es = {prompt_of(u.id): u for u in asterisk_utterances("all", language="es")}
    assert "beep" not in es and "beeperr" not in es  # "[tono simple]": annotation only
    assert es["vm-tempgreetactive"].text == "Sus saludos estan actualmente en uso"  # "[temporales]" dropped
    fr = {prompt_of(u.id): u.text for u in asterisk_utterances("all", language="fr")}
    assert fr["for"] == "Pour" and fr["activated"] == "activé"  # "(emphase)" dropped, accents kept
    it = {prompt_of(u.id): u.text for u in asterisk_utterances("all", language="it")}
    assert it["activated"] == "Attivato."  # the first line after the file's byte-order mark
    en = {u.id: u.text for u in asterisk_utterances("all")}
    for lang in LANGS:
        pair = {prompt_of(u.id): u for u in asterisk_utterances("all", language=lang, task="translate")}["agent-pass"]
        assert pair.translation == en["agent-pass"] == "Please enter your password followed by the pound key."
        assert pair.text and pair.language == lang
    assert total_minutes(asterisk_utterances("all", language="es")) == pytest.approx(28.87, abs=0.01)


def total_minutes(utts) -> float:
    return sum(u.duration for u in utts) / 60


def test_asterisk_splits_are_disjoint_and_the_same_in_every_language(real_asterisk: None) -> None:
    en_test = {u.id for u in asterisk_utterances("test")}
    en_dev = {u.id for u in asterisk_utterances("dev")}
    for lang in LANGS:
        for task in ("transcribe", "translate"):
            test = {prompt_of(u.id) for u in asterisk_utterances("test", language=lang, task=task)}
            dev = {prompt_of(u.id) for u in asterisk_utterances("dev", language=lang, task=task)}
            every = {prompt_of(u.id) for u in asterisk_utterances("all", language=lang, task=task)}
            assert test and dev and not test & dev and test | dev == every
            assert all(split_of(p) == "test" for p in test)
            assert not test & en_dev and not dev & en_test  # no test prompt is trained on in any language


# --- Fish Fillets NG in Czech and Dutch -------------------------------------------------------------------------

LUA = r'''
-- a comment: dialogStr("not this")
--[[ a long
comment ]]
dialogId("let-m-divna", "font_small", "What kind of strange ship is that?")
dialogStr("Co je to za divnou loď?")

dialogId("x-v-quote", "font_big", 'He said "hi"\n.')
dialogStr(
"Řekl \"ahoj\" [smích]...")
dialogId("x-v-none", "font_big", "No line in this language.")
os.execute("touch /tmp/never")
dialogId("x-long", nil, [[Long English]])
dialogStr([==[Dlouhý]==])
'''


def test_dialog_script_parser_reads_without_executing() -> None:
    got = parse_dialogs(LUA, "dialogs_cs.lua")
    assert got == {
        "let-m-divna": ("What kind of strange ship is that?", "Co je to za divnou loď?"),
        "x-v-quote": ('He said "hi"\n.', 'Řekl "ahoj" [smích]...'),
        "x-v-none": ("No line in this language.", ""),
        "x-long": ("Long English", "Dlouhý"),
    }
    assert plain_reference(got["x-v-quote"][1]) == "Řekl ahoj"
    with pytest.raises(ConfigError, match=r"^dialogs_nl\.lua: line 3: dialogStr without a dialogId before it$"):
        parse_dialogs('dialogId("a", "f", "A")\ndialogStr("a")\ndialogStr("b")\n', "dialogs_nl.lua")
    with pytest.raises(ConfigError, match=r"^s\.lua: line 1: unexpected character '\$'"):
        parse_dialogs("dialogId($)", "s.lua")


def test_fillets_real_sets(real_fillets: None) -> None:
    for lang, n in FILLETS_COUNTS.items():
        utts = fillets_utterances(lang, "all")
        pairs = fillets_utterances(lang, "all", "translate")
        assert len(utts) == len(pairs) == n
        assert all(u.language == lang and u.audio.suffix == ".ogg" and u.duration > 0 for u in utts)
        assert all(u.translation and u.task == "translate" and u.id.startswith(f"{lang}-en/") for u in pairs)
    cs = {u.id: u for u in fillets_utterances("cs", "all", "translate")}["cs-en/airplane/let-m-divna"]
    assert (cs.text, cs.translation) == ("Co je to za divnou loď?", "What kind of strange ship is that?")
    nl = {u.id: u.text for u in fillets_utterances("nl", "all")}
    assert nl["nl/airplane/let-m-divna"] == "Wat is dit voor raar schip?"
    assert total_minutes(fillets_utterances("cs", "all")) == pytest.approx(97.61, abs=0.01)
    # split by dialog id: the same in both languages and tasks, disjoint, covering all
    for lang in FILLETS_COUNTS:
        test = {dialog_of(u.id) for u in fillets_utterances(lang, "test")}
        dev = {dialog_of(u.id) for u in fillets_utterances(lang, "dev", "translate")}
        assert test and dev and not test & dev
        assert all(split_of(d) == "test" for d in test)


# --- festvox-ru: read Russian sentences ---------------------------------------------------------------------------

def test_festvox_texts_lose_their_stress_marks_and_split_by_sentence(tmp_path: Path, monkeypatch) -> None:
    import numpy as np
    import soundfile as sf

    (tmp_path / "etc").mkdir()
    (tmp_path / "wav").mkdir()
    lines = ['( ru_0001 "Она завела, прядь волнистых вол+ос за ухо." )', "",
             '( ru_0002 "Со спок+ойным мужеством." )', '( ru_0003 "нет записи" )']
    (tmp_path / "etc" / "txt.done.data").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for sid in ("ru_0001", "ru_0002"):
        sf.write(tmp_path / "wav" / f"{sid}.wav", np.zeros(16000, dtype=np.float32), 16000)
    monkeypatch.setenv(festvox.ROOT_ENV, str(tmp_path))
    utts = load_dataset("festvox-ru", "all")
    assert [(u.id, u.text, u.language, u.task, u.duration) for u in utts] == [
        ("ru/festvox/ru_0001", "Она завела, прядь волнистых волос за ухо.", "ru", "transcribe", 1.0),
        ("ru/festvox/ru_0002", "Со спокойным мужеством.", "ru", "transcribe", 1.0)]  # ru_0003 has no audio
    for split in ("dev", "test"):
        assert [u.id for u in festvox.festvox_utterances(split)] == \
            [u.id for u in utts if split_of(u.id.rsplit("/", 1)[1]) == split]
    (tmp_path / "etc" / "txt.done.data").write_text('( ru_0001 "a" )\nru_0002 "b"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"txt.done.data, line 2: not a"):
        festvox.read_texts(tmp_path / "etc" / "txt.done.data")
    monkeypatch.setenv(festvox.ROOT_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="install the Debian package festvox-ru"):
        festvox.festvox_utterances("test")


def test_festvox_real_set() -> None:
    try:
        festvox.root_dir()
    except ConfigError as exc:
        pytest.skip(f"Debian festvox-ru not installed: {exc}")
    utts = festvox.festvox_utterances("all")
    assert len(utts) == 620 and all(u.language == "ru" and "+" not in u.text for u in utts)
    assert total_minutes(utts) == pytest.approx(99.5, abs=0.5)
    test, dev = festvox.festvox_utterances("test"), festvox.festvox_utterances("dev")
    assert len(test) + len(dev) == 620 and not {u.id for u in test} & {u.id for u in dev}
    assert parse_training_spec("festvox-ru").split == "dev"


# --- bundled names, training specs, errors ------------------------------------------------------------------

def test_bundled_names_and_training_specs() -> None:
    assert list(MULTILINGUAL) == [
        "asterisk-es", "asterisk-fr", "asterisk-it", "asterisk-ru",
        "asterisk-es-en", "asterisk-fr-en", "asterisk-it-en", "asterisk-ru-en",
        "fillets-cs", "fillets-nl", "fillets-cs-en", "fillets-nl-en", "festvox-ru",
    ]
    assert MULTILINGUAL["asterisk-it-en"] == ("asterisk", "it", "translate")
    assert parse_training_spec("asterisk-es-en").split == "dev"
    assert parse_training_spec("fillets-nl:dev").name == "fillets-nl"
    with pytest.raises(ConfigError, match="may read the test split; use dev"):
        parse_training_spec("fillets-cs:test")


def test_load_dataset_by_name(real_asterisk: None) -> None:
    assert load_dataset("asterisk-fr") == asterisk_utterances("test", language="fr")
    assert load_dataset("asterisk-ru-en", "dev") == asterisk_utterances("dev", language="ru", task="translate")


@pytest.mark.parametrize(("call", "message"), [
    (lambda: load_dataset("asterisk-de"),
     "unknown data set 'asterisk-de': no language 'de' in the asterisk sets (choose from es, fr, it, ru)"),
    (lambda: load_dataset("fillets-cs-fr"),
     "unknown data set 'fillets-cs-fr': the fillets sets translate into English only (e.g. 'fillets-cs-en'), "
     "not into 'fr'"),
    (lambda: parse_training_spec("fillets-de:dev"),
     "unknown data set 'fillets-de': no language 'de' in the fillets sets (choose from cs, nl)"),
    (lambda: asterisk_utterances("test", language="de"),
     "unknown language 'de' for the asterisk set (choose from en, es, fr, it, ru)"),
    (lambda: asterisk_utterances("test", language="es", task="summarize"),
     "unknown task 'summarize' for the asterisk set (choose from transcribe, translate)"),
    (lambda: asterisk_utterances("test", language="en", task="translate"),
     "the asterisk set translates into English: English speech has no translate task"),
    (lambda: fillets_utterances("fr"), "unknown language 'fr' for the fillets set (choose from cs, nl)"),
])
def test_bad_language_or_task_is_one_line(call, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message


def test_a_translation_pair_with_an_empty_side_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    line = {"audio": "a.wav", "text": "hola", "language": "es", "task": "translate", "translation": " "}
    path.write_text(json.dumps(line) + "\n", "utf-8")
    with pytest.raises(ManifestError, match=r"m\.jsonl: line 1: 'translation' is empty: a translation pair needs "
                                            r"both sides") as info:
        read_manifest(path)
    assert "\n" not in str(info.value)


# --- scores ----------------------------------------------------------------------------------------------------

def _rec(i: str, lang: str, task: str, ref: str, hyp: str) -> dict:
    return {"id": i, "audio": i, "language": lang, "task": task, "reference": ref, "hypothesis": hyp}


def test_spanish_is_scored_without_diacritics_other_languages_with() -> None:
    assert scoring_text("Por favor ingrese su contraseña, número", "es") == "por favor ingrese su contrasena numero"
    assert scoring_text("activé", "fr") == "activé"
    m = score([_rec("es/a", "es", "transcribe", "Ingrese su contrasena", "Ingrese su contraseña."),
               _rec("fr/a", "fr", "transcribe", "activé", "active")])
    table = m["by_language_task"]
    assert table["es/transcribe"]["wer"] == 0.0 and table["es/transcribe"]["cer"] == 0.0
    assert table["fr/transcribe"]["wer"] == 1.0 and table["fr/transcribe"]["cer"] == pytest.approx(1 / 6)
    assert m["wer"] == pytest.approx(1 / 4)


def test_translate_records_get_bleu_per_language_and_task() -> None:
    ref = "Please enter your password followed by the pound key."
    m = score([_rec("es-en/a", "es", "translate", ref, ref),
               _rec("ru-en/a", "ru", "translate", ref, "Enter the password and press the pound key."),
               _rec("ru/a", "ru", "transcribe", "Введите пароль", "введите пароль")])
    table = m["by_language_task"]
    assert set(table) == {"es/translate", "ru/translate", "ru/transcribe"}
    assert table["es/translate"] == {"bleu": pytest.approx(100.0), "n_translated": 1}
    assert 0 < table["ru/translate"]["bleu"] < 100
    assert table["ru/transcribe"]["wer"] == 0.0
    assert m["n_translated"] == 2 and "bleu" in m
    assert "by_language_task" not in score([_rec("digits/1", "en", "transcribe", "one", "one")])
