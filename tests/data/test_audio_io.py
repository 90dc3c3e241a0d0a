"""load_audio / audio_duration on files written here: formats, downmix, resampling, and every error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.audio import SAMPLE_RATE, audio_duration, load_audio, wav_header_frames
from speechprune.errors import AudioError, SpeechpruneError


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def audio_error(path: Path, **kwargs) -> str:
    with pytest.raises(AudioError) as info:
        load_audio(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert info.value.path == str(path)
    return message[len(f"{path}: "):]


def test_mono_16k_wav_is_returned_as_is(tmp_path: Path) -> None:
    x = sine(440, 0.5, SAMPLE_RATE)
    sf.write(tmp_path / "a.wav", x, SAMPLE_RATE, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav")
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_array_equal(y, x)


def test_stereo_is_averaged(tmp_path: Path) -> None:
    left, right = sine(300, 0.25, SAMPLE_RATE), sine(700, 0.25, SAMPLE_RATE, amp=0.25)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    y = load_audio(tmp_path / "s.wav")
    assert y.shape == left.shape
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)


def test_8k_is_resampled_to_16k_keeping_length_and_pitch(tmp_path: Path) -> None:
    sf.write(tmp_path / "n.wav", sine(1000, 1.0, 8000), 8000, subtype="PCM_16")
    y = load_audio(tmp_path / "n.wav")
    assert y.shape == (16000,)
    assert peak_hz(y, 16000) == pytest.approx(1000, abs=1)
    mid = y[2000:-2000]  # away from the filter's edge transients
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_other_target_rate(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", sine(500, 1.0, 16000), 16000)
    y = load_audio(tmp_path / "a.wav", sample_rate=22050)
    assert y.shape == (22050,)
    assert peak_hz(y, 22050) == pytest.approx(500, abs=1)


def test_flac_is_lossless(tmp_path: Path) -> None:
    x = sine(440, 0.5, SAMPLE_RATE)
    sf.write(tmp_path / "a.flac", x, SAMPLE_RATE, subtype="PCM_16")
    np.testing.assert_allclose(load_audio(tmp_path / "a.flac"), x, atol=2 / 32768)


def test_ogg_vorbis_keeps_length_and_pitch(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.ogg", sine(440, 1.0, 44100), 44100, format="OGG", subtype="VORBIS")
    y = load_audio(tmp_path / "a.ogg")
    assert y.shape == (16000,)
    assert peak_hz(y, 16000) == pytest.approx(440, abs=1)


def test_missing_file(tmp_path: Path) -> None:
    assert audio_error(tmp_path / "nope.wav") == "file not found"


def test_folder_is_not_a_file(tmp_path: Path) -> None:
    assert audio_error(tmp_path) == "not a file"


@pytest.mark.parametrize("content", [b"RIFF\x00\x00\x00\x00WAVEjunkjunk" * 8, b"hello, I am text\n", b""])
def test_corrupt_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    assert audio_error(path).startswith("cannot read audio (")


def test_truncated_wav_is_detected_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "t.wav"
    sf.write(path, sine(440, 1.0, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[:-10001])  # 44-byte header + 32000 data bytes -> 21999 bytes left
    assert audio_error(path) == "truncated: header says 16000 frames, read 10999"


def test_wav_missing_one_byte_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "t.wav"
    sf.write(path, sine(440, 0.1, SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:-1])
    assert audio_error(path) == "truncated: header says 1600 frames, read 1599"


def test_truncated_flac(tmp_path: Path) -> None:
    path = tmp_path / "t.flac"
    sf.write(path, sine(440, 1.0, SAMPLE_RATE), SAMPLE_RATE)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert audio_error(path).startswith("truncated")


def test_wav_header_frames(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", np.zeros((1234, 2), np.float32), 8000, subtype="PCM_24")
    sf.write(tmp_path / "a.flac", np.zeros(1234, np.float32), 8000)
    assert wav_header_frames(tmp_path / "a.wav") == 1234
    assert wav_header_frames(tmp_path / "a.flac") is None


def test_empty_wav(tmp_path: Path) -> None:
    sf.write(tmp_path / "e.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    assert audio_error(tmp_path / "e.wav") == "audio is empty (0 samples)"


def test_non_finite_samples(tmp_path: Path) -> None:
    x = sine(440, 0.1, SAMPLE_RATE)
    x[10], x[20] = np.nan, np.inf
    sf.write(tmp_path / "n.wav", x, SAMPLE_RATE, subtype="FLOAT")
    assert audio_error(tmp_path / "n.wav") == "audio has 2 non-finite samples (NaN or inf)"


def test_too_long(tmp_path: Path) -> None:
    sf.write(tmp_path / "l.wav", np.zeros(8000 * 41 + 1600, np.float32), 8000)
    assert audio_error(tmp_path / "l.wav", max_seconds=30) == "clip is 41.20 s, longer than the 30 s limit"
    assert load_audio(tmp_path / "l.wav", max_seconds=41.2).shape == (16000 * 41 + 3200,)


def test_audio_duration(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", np.zeros(12000, np.float32), 8000)
    assert audio_duration(tmp_path / "a.wav") == 1.5
    with pytest.raises(AudioError, match="file not found"):
        audio_duration(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(AudioError, match=r"bad\.wav: cannot read audio"):
        audio_duration(tmp_path / "bad.wav")


def test_audio_error_is_a_speechprune_error() -> None:
    assert issubclass(AudioError, SpeechpruneError)
