import numpy as np
import pytest

from speechprune.data.features import FeatureFrontend, split_windows


def test_features_are_one_padded_window():
    feats = FeatureFrontend(80)([np.zeros(16000, np.float32), np.ones(8000, np.float32) * 0.1])
    assert feats.shape == (2, 80, 3000) and feats.dtype == np.float32


def test_a_clip_that_fits_stays_whole():
    x = np.ones(16000 * 30, np.float32)
    (w,) = split_windows(x)
    assert w is x or np.array_equal(w, x)


def test_long_clips_are_cut_in_the_quiet_before_each_window_end():
    sr = 16000
    rng = np.random.default_rng(0)
    x = (0.5 * rng.standard_normal(65 * sr)).astype(np.float32)
    x[int(28.6 * sr) : int(28.9 * sr)] = 0  # a pause 1.1 s before the first window's end
    windows = split_windows(x, sr)
    assert len(windows) == 3
    assert all(len(w) <= 30 * sr for w in windows)
    assert np.array_equal(np.concatenate(windows), x)
    assert 28.6 * sr <= len(windows[0]) <= 28.9 * sr


@pytest.mark.parametrize("seconds", [30.01, 59.99, 90.0])
def test_every_window_fits(seconds):
    x = np.random.default_rng(1).standard_normal(int(seconds * 16000)).astype(np.float32)
    ws = split_windows(x)
    assert sum(map(len, ws)) == len(x) and max(map(len, ws)) <= 30 * 16000 and min(map(len, ws)) > 0


def test_the_waveform_front_end_normalizes_each_clip_as_transformers_does():
    """Zero mean and unit variance over each clip's own samples (``Wav2Vec2FeatureExtractor`` with
    ``do_normalize``), zeros after it; transformers accumulates in float32, this front end in float64, so they
    agree to the rounding of two orders of the clip-long sums (mean, then variance)."""
    from transformers import Wav2Vec2FeatureExtractor

    from closeness import assert_reorder_close
    from speechprune.data.features import WaveformFrontend
    from speechprune.numerics import rounding_rtol

    rng = np.random.default_rng(0)
    audios = [(3.0 + 0.2 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 9000, 23456)]
    ours = WaveformFrontend()(audios)
    theirs = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)(
        audios, sampling_rate=16000, padding=True, return_tensors="np").input_values
    assert ours.shape == theirs.shape == (3, 23456) and ours.dtype == np.float32
    for row, ref, a in zip(ours, theirs, audios):
        n = len(a)
        assert_reorder_close(row[:n], ref[:n], k=n, depth=2)
        assert not row[n:].any()
        # storing each value in float32 moves the mean and the spread by at most one rounding of the largest value
        stored = rounding_rtol(np.float32) * float(np.abs(row[:n]).max())
        x = a.astype(np.float64)
        assert abs(float(row[:n].astype(np.float64).mean())) <= stored
        assert abs(float(row[:n].astype(np.float64).std()) - x.std() / np.sqrt(x.var() + 1e-7)) <= 2 * stored
    plain = WaveformFrontend(normalize=False)(audios[:2])
    assert np.array_equal(plain[1, :9000], audios[1]) and not plain[1, 9000:].any()
    assert WaveformFrontend().lengths(audios) == [16000, 9000, 23456]


def test_front_ends_are_equal_when_they_compute_the_same():
    from speechprune.data.features import WaveformFrontend, real_frames

    assert FeatureFrontend(80) == FeatureFrontend(80) and hash(FeatureFrontend(80)) == hash(FeatureFrontend(80))
    assert FeatureFrontend(80) != FeatureFrontend(128) and FeatureFrontend(80) != WaveformFrontend()
    assert WaveformFrontend() == WaveformFrontend(normalize=True) != WaveformFrontend(normalize=False)
    clips = [np.zeros(8000, np.float32), np.zeros(100, np.float32)]
    assert FeatureFrontend(80).lengths(clips) == [real_frames(8000), real_frames(100)] == [51, 1]
