"""Weight sites: the family-neutral list of weight-bearing modules that unstructured, low-rank and analysis code use."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny

from speechprune.models.adapters import adapter_for
from speechprune.models.units import COMPONENTS

FAMILIES = ("whisper", "wav2vec2")


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_cover_every_layer_weight_once(family):
    model = build_tiny(family)
    sites = adapter_for(model).weight_sites(model)
    keys = [s.key for s in sites]
    assert len(keys) == len(set(keys))
    assert {s.component for s in sites} <= set(COMPONENTS)
    params = {id(p) for p in model.parameters()}
    assert all(id(s.weight) in params for s in sites)
    # every 2-D Linear weight inside the layer stacks belongs to a site
    site_weights = {id(s.weight) for s in sites}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            assert id(mod.weight) in site_weights, name
    per_layer = [s for s in sites if s.layer is not None]
    assert {s.component for s in per_layer} >= {"self_attn", "ffn", "norm"}


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_follow_surgery_and_replace_swaps_the_module(family):
    model = build_tiny(family)
    adapter = adapter_for(model)
    before = {s.key for s in adapter.weight_sites(model)}
    adapter.remove_module(model, "encoder", 0, "ffn")
    adapter.remove_layers(model, "encoder", [1])
    after = {s.key for s in adapter.weight_sites(model)}
    assert "encoder.0.ffn.in" in before and "encoder.0.ffn.in" not in after
    n = adapter.n_layers(model, "encoder")
    assert not any(k.startswith(f"encoder.{n}.") for k in after)

    site = next(s for s in adapter.weight_sites(model) if s.key == "encoder.0.self_attn.q")
    new = torch.nn.Linear(site.module.in_features, site.module.out_features)
    site.replace(new)
    assert next(s for s in adapter.weight_sites(model) if s.key == "encoder.0.self_attn.q").module is new


def test_whisper_token_embedding_is_marked_tied():
    model = build_tiny("whisper")
    sites = {s.key: s for s in adapter_for(model).weight_sites(model)}
    assert sites["decoder.embed.tokens"].tied
    assert "decoder.embed.output" not in sites
    assert sites["encoder.conv.0"].component == "conv" and sites["encoder.conv.0"].layer is None
