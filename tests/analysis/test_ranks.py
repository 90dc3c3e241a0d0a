import math

import pytest

from speechprune.analysis.ranks import average_ranks, spearman


def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1]


def test_spearman_known_values():
    # scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) from scipy's documentation
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    assert spearman([1, 2, 3], [10, 200, 3000]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1)) with d = (0, 2, -1, -1) -> 1 - 36 / 60
    assert spearman([1, 2, 3, 4], [1, 4, 2, 3]) == pytest.approx(0.4)


def test_spearman_degenerate():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, float("nan")])
    with pytest.raises(ValueError):
        spearman([1, 2], [1])
