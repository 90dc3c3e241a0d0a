"""Ablation scoring on the real tiny.en and a few real dev prompts: the cached dense encoder output gives the same
scores as recomputing it, and damage shows in both the proxy loss and the WER."""

from __future__ import annotations

import pytest

from cli_helpers import SOUNDS

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not SOUNDS.is_dir(), reason="apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en")]


def test_proxy_and_wer_on_real_tiny_en():
    from speechprune.analysis.ablation import Target, ablated
    from speechprune.analysis.scoring import WhisperScorer
    from speechprune.data.datasets import load_dataset
    from speechprune.evaluate.backends import TorchWhisper
    from speechprune.models.adapters import adapter_for
    from speechprune.models.registry import resolve_model

    be = TorchWhisper.from_folder(resolve_model("whisper-tiny.en"))
    scorer = WhisperScorer(be, load_dataset("asterisk", "dev")[:4], batch_size=4)
    dense = scorer.proxy(be.model, frozenset({"decoder"}))
    assert dense == pytest.approx(scorer.proxy(be.model), rel=1e-4)  # cached encoder output == recomputed
    assert 0 < dense < 1.5  # the references are easy prompts: under 1.5 nats per token
    assert scorer.wer(be.model) < 0.3
    adapter = adapter_for(be.model)
    with ablated(be.model, adapter, Target("decoder", 0), "skip") as damaged:
        assert scorer.proxy(damaged, frozenset({"decoder"})) > 2 * dense
    with ablated(be.model, adapter, Target("encoder", 0), "rerandom", seed=0) as damaged:
        assert scorer.proxy(damaged, frozenset({"encoder"})) > 2 * dense
    assert scorer.proxy(be.model, frozenset()) == pytest.approx(dense, rel=1e-6)  # restored
