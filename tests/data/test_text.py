"""LM text: the corpus builder on small fake sources (normalized and written forms, deduplication, the hash split,
the cache), text files and transcripts as text, and one-line errors."""

from __future__ import annotations

import json

import pytest

from speechprune.data import text as T
from speechprune.errors import ConfigError

FAKE = {
    "one": lambda: ["The cat sat on the mat. It cost $25, Mr. Smith said!", "Hello.", "The cat sat on the mat."],
    "two": lambda: ["Twenty-five colours (a note) were seen in 1999. The end came quickly."],
}


def _files(folder, form="normalized"):
    suffix = ".txt" if form == "normalized" else ".written.txt"
    return {s: (folder / f"{s}{suffix}").read_text().splitlines() for s in T.SPLITS}


def test_the_builder_normalizes_deduplicates_and_splits_by_the_lines_hash(tmp_path):
    record = T.build_corpus(tmp_path / "c", FAKE, {"rules": T.RULES}, progress=False)
    lines = _files(tmp_path / "c")
    every = [s for split in T.SPLITS for s in lines[split]]
    assert sorted(every) == sorted(["the cat sat on the mat", "it cost $25 mister smith said",
                                    "25 colors were seen in 1999", "the end came quickly"])  # "Hello." is one word
    assert all(T.split_of(s) == split for split in T.SPLITS for s in lines[split])
    written = _files(tmp_path / "c", "written")
    # "$" and brackets are not plain written English: those sentences have no written form
    assert sorted(s for s_ in written.values() for s in s_) == ["The cat sat on the mat.", "The end came quickly."]
    for split in T.SPLITS:  # a written sentence lies in its normalized form's split
        assert all(T.split_of(T.normalize_text(w)) == split for w in written[split])
    one = record["sources"]["one"]
    assert one["texts"] == 3 and sum(one["normalized_lines"].values()) == 2  # the repeated sentence once
    assert sum(one["normalized_words"].values()) == 6 + 6
    assert record["words"]["normalized"] == {s: sum(len(x.split()) for x in lines[s]) for s in T.SPLITS}
    assert json.loads((tmp_path / "c" / T.BUILD).read_text()) == record


def test_the_split_is_a_fixed_one_percent_each_for_dev_and_test():
    splits = [T.split_of(f"line number {i}") for i in range(20000)]
    assert T.split_of("the same line") == T.split_of("the same line")
    assert 150 < splits.count("dev") < 250 and 150 < splits.count("test") < 250


def test_the_corpus_is_built_once_and_rebuilt_when_its_packages_change(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(tmp_path))
    calls = []

    def readers():
        calls.append(1)
        return FAKE

    version = {"v": "1"}
    monkeypatch.setattr(T, "default_readers", readers)
    monkeypatch.setattr(T, "_fingerprint", lambda sources: {"rules": T.RULES, "packages": dict(version)})
    assert T.corpus_dir(progress=False) == tmp_path / "text" / T.CORPUS
    T.corpus_dir(progress=False)
    assert len(calls) == 1
    version["v"] = "2"
    T.corpus_dir(progress=False)
    assert len(calls) == 2 and T.corpus_record()["packages"] == {"v": "2"}
    train = T.text_lines(T.CORPUS, "train", progress=False)
    assert set(train) <= {"the cat sat on the mat", "it cost $25 mister smith said", "25 colors were seen in 1999",
                          "the end came quickly"}
    with pytest.raises(ConfigError, match="unknown text corpus"):
        T.corpus_dir("klingon-text")


def test_text_files_plain_and_jsonl(tmp_path):
    plain = tmp_path / "t.txt"
    plain.write_text("Hello there, World!\n\n  Two   spaces here.\n")
    assert T.text_lines(str(plain)) == ["hello there world", "2 spaces here"]  # numbers as the references have them
    assert T.text_lines(str(plain), form="written") == ["Hello there, World!", "Two spaces here."]
    assert T.text_lines(str(plain), "all") == T.text_lines(str(plain))
    for split in T.SPLITS:  # a file's split: the lines the hash puts there
        want = [s for s in T.text_lines(str(plain)) if T.split_of(s) == split]
        if want:
            assert T.text_lines(str(plain), split) == want
        else:
            with pytest.raises(ConfigError, match=f"t.txt: no text lines in the {split} split"):
                T.text_lines(str(plain), split)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "text": "Press 1."}) + "\n\n" + json.dumps({"text": "Two"}))
    assert T.text_lines(str(manifest)) == ["press one", "2"]  # the normalizer's own reading of numbers


def test_bad_text_is_a_one_line_error_naming_the_file(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.txt: not UTF-8 text \(byte 3\)") as e:
        T.text_lines(str(bad))
    assert "\n" not in str(e.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n ... \n")
    with pytest.raises(ConfigError, match=r"empty.txt: no text lines"):
        T.text_lines(str(empty))
    js = tmp_path / "bad.jsonl"
    js.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(ConfigError, match=r'bad.jsonl: line 2: no "text" string'):
        T.text_lines(str(js))
    with pytest.raises(ConfigError, match="unknown text 'nothing-here'"):
        T.text_lines("nothing-here")
    with pytest.raises(ConfigError, match="test split"):
        T.text_lines("asterisk:test", training=True)
    with pytest.raises(ConfigError, match="english-text: nothing that trains may read the test split"):
        T.text_lines(T.CORPUS, "test", training=True)
    with pytest.raises(ConfigError, match="unknown text form"):
        T.text_lines(str(js), form="shouted")


def test_the_treasury_of_david_export_loses_its_markup():
    raw = "$$$Psalms 1:1\n  * Verse 1. * * \"BLESSED\" * \u2014see how it opens!\n$$$Psalms 1:2\n\n"
    assert T.parse_tdavid(raw) == ['"BLESSED" \u2014see how it opens!']
    assert [n for n, _ in T.sentence_forms(T.parse_tdavid(raw)[0])] == ["blessed see how it opens"]
