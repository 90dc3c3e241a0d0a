"""read_manifest / write_manifest: path resolution, defaults, and one-line errors with line numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechprune.data.manifest import Utterance, read_manifest, write_manifest
from speechprune.errors import ManifestError


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


GOOD = json.dumps({"audio": "clips/a.wav", "text": "press one"})


def test_good_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    write_lines(
        folder / "m.jsonl",
        [
            GOOD,
            "",
            "   ",
            json.dumps(
                {
                    "id": "u2",
                    "audio": "../other/b.flac",
                    "text": "",
                    "language": "de",
                    "task": "translate",
                    "translation": "hello",
                    "duration": 2,
                }
            ),
            json.dumps({"audio": "/abs/c.wav", "text": "x", "language": None}),
        ],
    )
    monkeypatch.chdir(tmp_path)  # relative audio must resolve against the manifest folder, not the cwd
    utts = read_manifest("set/m.jsonl")
    assert utts == [
        Utterance(id="clips/a.wav", audio=folder / "clips" / "a.wav", text="press one"),
        Utterance(
            id="u2",
            audio=tmp_path / "other" / "b.flac",
            text="",
            language="de",
            task="translate",
            translation="hello",
            duration=2.0,
        ),
        Utterance(id="/abs/c.wav", audio=Path("/abs/c.wav"), text="x"),
    ]
    assert all(u.audio.is_absolute() for u in utts)


def test_audio_files_are_not_opened(tmp_path: Path) -> None:
    utts = read_manifest(write_lines(tmp_path / "m.jsonl", [GOOD]))
    assert not utts[0].audio.exists()


def test_utf8_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\r\n" + json.dumps({"audio": "b.wav", "text": "ü"}).encode() + b"\r\n")
    assert [u.text for u in read_manifest(path)] == ["press one", "ü"]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"audio": "a.wav" "text": "x"}', "line 2: not valid JSON (Expecting ',' delimiter)"),
        (b'{"audio": "a.wav", "text": "\xff"}', "line 2: not UTF-8"),
        ('{"text": "x"}', "line 2: missing key 'audio'"),
        ('{"audio": "b.wav"}', "line 2: missing key 'text'"),
        ('{"audio": "b.wav", "txt": "x"}', "line 2: unknown key 'txt'"),
        ('{"audio": "clips/a.wav", "text": "again"}', "line 2: duplicate id 'clips/a.wav' (first on line 1)"),
        ('{"audio": "b.wav", "text": "x", "task": "summarize"}', "line 2: 'task' must be one of transcribe, translate"),
        ('{"audio": "b.wav", "text": 3}', "line 2: 'text' must be a string, got number"),
        ('{"audio": "", "text": "x"}', "line 2: 'audio' must not be empty"),
        ('{"audio": ["b.wav"], "text": "x"}', "line 2: 'audio' must be a string, got array"),
        ('{"audio": "b.wav", "text": "x", "language": 5}', "line 2: 'language' must be a string, got number"),
        ('{"audio": "b.wav", "text": "x", "duration": "2s"}', "line 2: 'duration' must be a number, got string"),
        ('{"audio": "b.wav", "text": "x", "duration": true}', "line 2: 'duration' must be a number, got boolean"),
        ('{"audio": "b.wav", "text": "x", "duration": -1}', "line 2: 'duration' must be a finite number >= 0"),
        ('["b.wav", "x"]', "line 2: expected a JSON object, got list"),
    ],
)
def test_line_errors(tmp_path: Path, bad_line: str | bytes, message: str) -> None:
    path = write_lines(tmp_path / "m.jsonl", [GOOD, bad_line, GOOD.replace("a.wav", "z.wav")])
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: {message}")


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", [GOOD, "", "", "", "", "", '{"audio": "b.wav", "text": "x",}'])
    with pytest.raises(ManifestError, match=r"m\.jsonl: line 7: not valid JSON \(Expecting property name"):
        read_manifest(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "none.jsonl")
    assert str(info.value) == f"{tmp_path / 'none.jsonl'}: file not found"


def test_empty_manifest(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", ["", "  "])
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert str(info.value) == f"{path}: no utterances"


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    inside = tmp_path / "set" / "clips" / "a.wav"
    outside = tmp_path / "elsewhere" / "b.wav"
    utts = [
        Utterance(id="a", audio=inside, text="hello", language="en"),
        Utterance(id="b", audio=outside, text="hallo", language="de", task="translate", translation="hello", duration=1.25),
    ]
    path = tmp_path / "set" / "m.jsonl"
    write_manifest(path, utts)
    records = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    assert records[0] == {"id": "a", "audio": "clips/a.wav", "text": "hello", "language": "en"}
    assert records[1]["audio"] == str(outside)
    assert read_manifest(path) == utts
    assert [p.name for p in path.parent.iterdir()] == ["m.jsonl"]  # no temporary file left behind
