import pytest
import torch

from speechprune.errors import ConfigError
from speechprune.prune import selection as S

SCORES = {
    "encoder.0.self_attn": torch.tensor([0.9, 0.1, 0.8, 0.7]),
    "encoder.1.self_attn": torch.tensor([0.2, 0.3, 0.1, 0.25]),
    "encoder.2.self_attn": torch.tensor([0.5, 0.6, 0.55, 0.05]),
}


def test_per_group_removes_the_same_share_everywhere():
    keep = S.per_group(SCORES, 0.5)
    assert keep == {"encoder.0.self_attn": [0, 2], "encoder.1.self_attn": [1, 3], "encoder.2.self_attn": [1, 2]}


def test_global_removes_the_lowest_overall_and_keeps_one_per_group():
    keep = S.global_(SCORES, 0.5)  # 6 lowest: .05 .1 .1 .2 .25 then .3 (group 1 must keep one)
    assert keep["encoder.1.self_attn"] == [1]
    assert sum(map(len, keep.values())) == 6
    assert 3 not in keep["encoder.2.self_attn"] and 1 not in keep["encoder.0.self_attn"]


def test_local_empties_the_least_important_groups_first():
    keep = S.local(SCORES, 0.5)  # 6 heads: all 4 of layer 1 (lowest mean), then the 2 lowest of layer 2
    assert keep["encoder.1.self_attn"] == []
    assert keep["encoder.2.self_attn"] == [1, 2]
    assert keep["encoder.0.self_attn"] == [0, 1, 2, 3]


def test_impossible_sparsities_are_refused():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError):
            S.per_group(SCORES, bad)
    with pytest.raises(ConfigError):
        S.rank_layers({0: 1.0, 1: 2.0}, 2)


def test_layer_ranking_and_geometric_steps():
    assert S.rank_layers({0: 0.5, 1: 0.1, 2: 0.3, 3: 0.9}, 2) == [1, 2]
    r = S.step_ratios(0.75, 2)
    assert r[-1] == pytest.approx(0.75) and r[0] == pytest.approx(0.5)
    assert S.step_ratios(0.5, 1) == [pytest.approx(0.5)]
