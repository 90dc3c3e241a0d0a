"""Noise and channel augmentation: each step measured on the signal it makes."""

from __future__ import annotations

import numpy as np
import pytest

from speechprune.data import augment as A

SR = 16000


def tone(hz: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * hz * np.arange(int(SR * seconds)) / SR)).astype(np.float32)


def band_power(x: np.ndarray, lo: float, hi: float, sr: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / sr)
    return float(spec[(f >= lo) & (f < hi)].sum())


@pytest.mark.parametrize("kind,slope", [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_noise_colours_have_their_spectral_slopes(kind, slope):
    x = A.colored_noise(2**16, kind, np.random.default_rng(0))
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
    octaves = [(125 * 2**i, 250 * 2**i) for i in range(5)]  # power per octave: flat for pink, doubling for white
    per_hz = [band_power(x, lo, hi) / (hi - lo) for lo, hi in octaves]
    fitted = np.polyfit(np.log2([lo for lo, _ in octaves]), np.log2(per_hz), 1)[0]
    assert fitted == pytest.approx(slope, abs=0.2)


def test_noise_is_added_at_the_asked_snr():
    x, noise = tone(440), A.colored_noise(SR // 3, "white", np.random.default_rng(1))  # shorter: tiled
    y = A.add_noise(x, noise, 10.0)
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((y - x).astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=0.05)
    assert np.array_equal(A.add_noise(np.zeros(100, np.float32), noise, 10.0), np.zeros(100, np.float32))


def test_room_response_decays_60_db_over_rt60():
    h = A.room_response(0.5, np.random.default_rng(2))
    assert len(h) == SR // 2 and h[0] == np.abs(h).max()  # the direct path first
    ms = SR // 100
    early, late = np.mean(h[1 : 1 + ms] ** 2), np.mean(h[-ms:] ** 2)
    assert 10 * np.log10(early / late) == pytest.approx(60 * (0.5 - 0.01) / 0.5, abs=3)  # the envelope, +-3 dB of noise
    click = np.zeros(SR, np.float32)
    click[0] = 1.0
    np.testing.assert_allclose(A.reverberate(click, h)[: len(h)], h / h[0], atol=1e-6)  # a click gives the response
    wet = A.reverberate(tone(440), h)
    assert len(wet) == SR and np.max(np.abs(wet)) == pytest.approx(0.5, rel=1e-6)


def test_telephone_keeps_the_voice_band_and_drops_the_rest():
    for hz, kept in ((100, False), (1000, True), (3000, True), (6000, False)):
        y = A.telephone(tone(hz))
        ratio_db = 10 * np.log10(band_power(y, hz - 20, hz + 20) / band_power(tone(hz), hz - 20, hz + 20))
        assert (ratio_db > -1.5) if kept else (ratio_db < -30), (hz, ratio_db)
    x = tone(1000)
    y = A.telephone(x)
    noise_db = 10 * np.log10(np.mean(x[800:-800] ** 2) / np.mean((y - x)[800:-800] ** 2))
    assert 25 < noise_db < 50  # 8-bit mu-law: ~38 dB, not transparent, not broken


def test_speed_change_scales_duration_and_pitch():
    y = A.change_speed(tone(1000), 1.25)
    assert len(y) == pytest.approx(SR / 1.25, abs=2)
    spec = np.abs(np.fft.rfft(y))
    assert np.fft.rfftfreq(len(y), 1 / SR)[spec.argmax()] == pytest.approx(1250, abs=3)
    assert np.array_equal(A.change_speed(tone(1000), 1.0), tone(1000))


def test_the_chain_is_a_function_of_its_seed():
    x = tone(300, 2.0) + 0.1 * tone(2000, 2.0)
    babble = tone(523, 0.7)
    runs = [A.augment(x, A.AugmentSettings(), np.random.default_rng([7, i]), babble) for i in range(12)]
    again = A.augment(x, A.AugmentSettings(), np.random.default_rng([7, 3]), babble)
    assert np.array_equal(again[0], runs[3][0]) and again[1] == runs[3][1]
    kinds = {s.split()[0] for _, steps in runs for s in steps}
    assert {"speed", "reverb", "noise", "telephone", "gain"} <= kinds  # every step happens across a dozen draws
    assert all(np.max(np.abs(y)) <= 0.95 + 1e-6 and y.dtype == np.float32 for y, _ in runs)
    clean, steps = A.augment(x, A.AugmentSettings(speed_p=0, reverb_p=0, telephone_p=0, noise_p=0, gain_p=0), np.random.default_rng(0))
    assert steps == [] and np.array_equal(clean, x.astype(np.float32))


@pytest.mark.parametrize("kw,msg", [({"noise_p": 1.5}, "less than or equal to 1"), ({"speed": (1.2, 1.1)}, "speed"),
                                    ({"snr_db": (30, 5)}, "snr"), ({"nosie_p": 0.2}, "Extra inputs")])
def test_bad_settings_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        A.AugmentSettings(**kw)


def test_utterances_are_written_augmented_and_unreadable_ones_pass(tmp_path):
    import soundfile as sf

    from speechprune.data.manifest import Utterance

    utts = []
    for i, hz in enumerate((300, 500, 700)):
        sf.write(tmp_path / f"{i}.wav", tone(hz), SR)
        utts.append(Utterance(id=str(i), audio=tmp_path / f"{i}.wav", text=f"t{i}"))
    utts.append(Utterance(id="gone", audio=tmp_path / "gone.wav", text="x"))
    settings = A.AugmentSettings(noise_p=1.0, speed_p=0, reverb_p=0, telephone_p=0, gain_p=0)
    out = A.augment_utterances(utts, settings, tmp_path / "aug", seed=3)
    assert [u.id for u in out] == ["0", "1", "2", "gone"] and out[3] is utts[3]
    assert [u.text for u in out] == ["t0", "t1", "t2", "x"] and all(u.audio.parent == tmp_path / "aug" for u in out[:3])
    y, sr = sf.read(out[0].audio)
    assert sr == SR and len(y) == SR and not np.allclose(y, tone(300), atol=1e-3)  # noise was added
    again = A.augment_utterances(utts, settings, tmp_path / "aug2", seed=3)
    assert np.array_equal(sf.read(again[1].audio)[0], sf.read(out[1].audio)[0])
