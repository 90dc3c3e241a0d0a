"""Ablation scoring on the real tiny.en and a few real dev prompts: the cached dense encoder output (and cached
encoder layer inputs) give the same scores as recomputing them, and damage shows in the proxy loss and the WER."""

from __future__ import annotations

import pytest

from cli_helpers import SOUNDS

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not SOUNDS.is_dir(), reason="apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en")]


def test_proxy_and_wer_on_real_tiny_en():
    from speechprune.analysis.ablation import Target, ablated
    from speechprune.analysis.scoring import ALL, Scorer
    from speechprune.data.datasets import load_dataset
    from speechprune.models.adapters import adapter_for
    from speechprune.models.registry import resolve_model
    from speechprune.models.whisper.backend import TorchWhisper

    be = TorchWhisper.from_folder(resolve_model("whisper-tiny.en"))
    scorer = Scorer(be, load_dataset("asterisk", "dev")[:4], batch_size=4)
    dense = scorer.proxy(be.model, {})
    assert dense == scorer.proxy(be.model, ALL)  # cached encoder output == recomputed (the same computation)
    assert dense == scorer.proxy(be.model, {"encoder": 2})  # from the cached layer-2 input
    assert 0 < dense < 1.5  # the references are easy prompts: under 1.5 nats per token
    assert scorer.wer(be.model, {}) < 0.3
    adapter = adapter_for(be.model)
    with ablated(be.model, adapter, Target("decoder", 0), "skip") as damaged:
        assert scorer.proxy(damaged, {"decoder": 0}) > 2 * dense
    for method, layer in [("rerandom", 2), ("skip", 1), ("skip", 3)]:
        with ablated(be.model, adapter, Target("encoder", layer), method, seed=0) as damaged:
            cached = scorer.proxy(damaged, {"encoder": layer})
            assert cached > 1.2 * dense
            assert cached == scorer.proxy(damaged, ALL)  # layer-input cache == full run
    assert scorer.proxy(be.model, {}) == dense  # restored bit for bit
    assert adapter.n_layers(be.model, "encoder") == 4
    # the cached path is the one taken: a corrupted cached layer input shows in the score
    assert sorted(scorer.reference.layer_inputs[0]) == [0, 1, 2, 3]
    scorer.reference.layer_inputs[0][2] = scorer.reference.layer_inputs[0][2] * 0
    assert scorer.proxy(be.model, {"encoder": 2}) > 1.2 * dense
