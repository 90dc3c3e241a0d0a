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
