import math

import pytest
import torch

from speechprune.analysis.ablation import init_like
from speechprune.analysis.signatures import (
    compare_models, correlate_with_ablation, frobenius_distances, layer_signatures, normalize_by_type, signature_table,
    site_tensors,
)
from speechprune.errors import ModelError
from speechprune.models.adapters import adapter_for
from tiny_models import build_tiny, pruned_tiny_whisper


@pytest.mark.parametrize("family", ["whisper", "wav2vec2"])
def test_identical_models_have_zero_signature(family):
    model = build_tiny(family)
    rows = compare_models(model, build_tiny(family))
    assert rows and all(r["distance"] == 0 and r["normalized"] == 0 for r in rows)
    assert set(layer_signatures(rows).values()) == {0.0}


def test_max_layer_reads_one_and_others_their_ratio():
    before = build_tiny("whisper", encoder_layers=3)
    after = build_tiny("whisper", encoder_layers=3)
    adapter = adapter_for(after)
    fc_in = {s.layer: s for s in adapter.weight_sites(after) if s.stack == "encoder" and s.key.endswith("ffn.in")}
    with torch.no_grad():  # move encoder FFN-in weights by 1, 3 and 2 times one fixed direction
        d = torch.randn(fc_in[0].weight.shape, generator=torch.Generator().manual_seed(0))
        for layer, scale in {0: 1.0, 1: 3.0, 2: 2.0}.items():
            fc_in[layer].weight.add_(scale * d)
    rows = compare_models(before, after)
    got = {r["key"]: r for r in rows}
    assert got["encoder.1.ffn.in"]["normalized"] == pytest.approx(1.0)
    assert got["encoder.0.ffn.in"]["normalized"] == pytest.approx(1 / 3)
    assert got["encoder.2.ffn.in"]["normalized"] == pytest.approx(2 / 3)
    assert got["encoder.1.ffn.in"]["distance"] == pytest.approx(3 * float(d.norm()), rel=1e-5)
    assert all(r["distance"] == 0 for r in rows if not r["key"].endswith("ffn.in") or r["stack"] != "encoder")
    layers = layer_signatures(rows)
    assert layers["encoder.1"] == pytest.approx(1.0) and layers["encoder.0"] == pytest.approx(1 / 3)
    types, cols, grid = signature_table(rows, "encoder")
    assert cols == ["0", "1", "2"] and grid[types.index("ffn.in")] == pytest.approx([1 / 3, 1.0, 2 / 3])
    assert all(0.0 <= v <= 1.0 for row in grid for v in row if v is not None)


def test_normalize_by_type_is_per_type():
    rows = [{"type": "a", "distance": 2.0}, {"type": "a", "distance": 4.0}, {"type": "b", "distance": 0.5},
            {"type": "c", "distance": 0.0}]
    assert [r["normalized"] for r in normalize_by_type(rows)] == [0.5, 1.0, 1.0, 0.0]


def test_initial_vs_trained_is_nonzero_everywhere():
    model = build_tiny("whisper")
    rows = compare_models(init_like(model, 0), model)
    assert all(r["distance"] > 0 for r in rows)
    assert max(r["normalized"] for r in rows) == 1.0


def test_shape_mismatch_is_a_one_line_error_naming_the_folder():
    dense, pruned = build_tiny("whisper", encoder_layers=3, decoder_layers=3), pruned_tiny_whisper()
    with pytest.raises(ModelError) as e:
        frobenius_distances(site_tensors(dense), site_tensors(pruned), where="/x/after")
    msg = str(e.value)
    assert msg.startswith("/x/after: ") and "\n" not in msg and "architecture" in msg
    # same sites, different widths
    a = build_tiny("whisper")
    b = build_tiny("whisper")
    adapter = adapter_for(b)
    group = next(g for g in adapter.unit_groups(b) if g.key == "encoder.0.ffn")
    adapter.prune_units(b, group, list(range(10)))
    with pytest.raises(ModelError, match=r"shapes differ at encoder\.0\.ffn\.in\.weight: \(64, 32\) vs \(10, 32\)"):
        frobenius_distances(site_tensors(a), site_tensors(b), where="/x/after")


def test_correlation_with_an_ablation_summary():
    layers = {"encoder.0": 0.2, "encoder.1": 1.0, "encoder.2": 0.5}
    summary = {"metrics": {"proxy": {}}, "methods": ["skip", "reinit"],
               "table": {"encoder.0": {"skip": {"proxy": {"delta": 0.1}}, "reinit": {"proxy": {"delta": 3.0}}},
                         "encoder.1": {"skip": {"proxy": {"delta": 0.9}}, "reinit": {"proxy": {"delta": 1.0}}},
                         "encoder.2": {"skip": {"proxy": {"delta": 0.4}}, "reinit": {"proxy": {"delta": 2.0}}}}}
    c = correlate_with_ablation(layers, summary)
    assert c["proxy"]["skip"] == {"spearman": pytest.approx(1.0), "n": 3}
    assert c["proxy"]["reinit"]["spearman"] == pytest.approx(-1.0)
    assert math.isclose(c["proxy"]["reinit"]["n"], 3)
